"""GET /functions/v1/characters: the characters the caller may use in a batch (their own and
the shared ones), by name, read as the caller so row level security decides; an admin (the
service role) sees every character. Adding one is an operator's job (zimage characters add):
it uploads the adapter, which only the service role may write."""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.context import FunctionContext
from api.errors import HttpError
from api.openapi import errors
from api.queries import QUERIES
from kernel.db import act_as_user

METHODS = ["GET"]
_CHARACTER = {
    "type": "object",
    "required": ["id", "name", "trigger_phrase", "default_weight", "shared", "mine"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "trigger_phrase": {"type": ["string", "null"]},
        "default_weight": {"type": "number"},
        "shared": {"type": "boolean"},
        "mine": {"type": "boolean", "description": "the caller owns it"},
    },
}
OPENAPI = {
    "get": {
        "operationId": "listCharacters",
        "summary": "The characters the caller may use: their own and the shared ones",
        "responses": {
            "200": {
                "description": "by name",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["characters"],
                            "properties": {"characters": {"type": "array", "items": _CHARACTER}},
                        }
                    }
                },
            },
            **errors(401, 403),
        },
    }
}


async def handle(request: Request, ctx: FunctionContext) -> Response:
    caller = await ctx.caller(request)
    as_user = None if caller.is_admin else caller.user_id
    if as_user is None and not caller.is_admin:
        raise HttpError(403, "sign in to list your characters: the anon key may use none")
    async with ctx.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        if as_user is not None:
            await act_as_user(conn, as_user)
        await cursor.execute(QUERIES["list_characters"])
        rows: list[dict[str, Any]] = await cursor.fetchall()
    return JSONResponse(
        {
            "characters": [
                {
                    "id": str(row["id"]),
                    "name": row["name"],
                    "trigger_phrase": row["trigger_phrase"],
                    "default_weight": row["default_weight"],
                    "shared": row["shared"],
                    "mine": caller.user_id is not None and str(row["owner_id"]) == str(caller.user_id),
                }
                for row in rows
            ]
        }
    )
