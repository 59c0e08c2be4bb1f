"""POST /functions/v1/retry-failed (admin): requeue failed jobs.

Body ``{batch_id?, job_ids?, failed_since?}`` (ISO 8601); the filters combine and at
least one is required. Answers ``{requeued: n}``. Each requeued job starts again
from attempt 0, and followers of its batch see it come back (``requeued`` events,
then its progress as it runs again).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.context import FunctionContext
from api.errors import HttpError
from api.openapi import errors

METHODS = ["POST"]
OPENAPI = {
    "post": {
        "operationId": "retryFailed",
        "summary": "Requeue failed jobs (admins)",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "batch_id": {"type": "string", "format": "uuid"},
                            "job_ids": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "string", "format": "uuid"},
                            },
                            "failed_since": {"type": "string", "format": "date-time"},
                        },
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "how many jobs went back to the queue",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["requeued"],
                            "properties": {"requeued": {"type": "integer"}},
                        }
                    }
                },
            },
            **errors(400, 401, 403, 413),
        },
    }
}
T = TypeVar("T")


async def handle(request: Request, ctx: FunctionContext) -> Response:
    ctx.admin_only(await ctx.caller(request))
    body = await ctx.json_body(request)
    batch_id = _optional("batch_id", body, UUID)
    raw_job_ids = body.get("job_ids")
    job_ids: list[UUID] | None = None
    if raw_job_ids is not None:
        if not isinstance(raw_job_ids, list) or not raw_job_ids:
            raise HttpError(400, "job_ids: must be a non-empty list of job ids")
        job_ids = [_parse("job_ids", value, UUID) for value in raw_job_ids]
    failed_since = _optional("failed_since", body, datetime.fromisoformat)
    if batch_id is None and job_ids is None and failed_since is None:
        raise HttpError(400, "give batch_id, job_ids or failed_since")
    if failed_since is not None and failed_since.tzinfo is None:
        raise HttpError(400, "failed_since: include a time zone, e.g. 2026-11-24T10:00:00Z")
    async with ctx.pool.connection() as conn:
        cursor = await conn.execute(
            "select public.requeue_failed_jobs(%s, %s, %s)", (batch_id, job_ids, failed_since)
        )
        row = await cursor.fetchone()
    return JSONResponse({"requeued": row[0] if row else 0})


def _optional(name: str, body: dict[str, object], parse: Callable[[str], T]) -> T | None:
    return None if body.get(name) is None else _parse(name, body[name], parse)


def _parse(name: str, value: object, parse: Callable[[str], T]) -> T:
    try:
        return parse(str(value))
    except ValueError:
        raise HttpError(400, f"{name}: {value!r} is not valid") from None
