"""POST /functions/v1/retry-failed: requeue failed jobs, for an admin or, their own, for a user.

Body ``{batch_id?, job_ids?, failed_since?}`` (ISO 8601); the filters combine and at
least one is required; ``failed_since`` (jobs across users) is for admins only, and a user's
batch or jobs must be theirs (403 naming the one that is not, 404 for one that does not
exist). Answers ``{requeued: n}``. Each requeued job starts again from attempt 0, and
followers of its batch see it come back (``requeued`` events, then its progress as it runs
again).
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
from api.ownership import check_owner

METHODS = ["POST"]
OPENAPI = {
    "post": {
        "operationId": "retryFailed",
        "summary": "Requeue failed jobs (an admin's, anyone's; a user's, their own)",
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
            **errors(400, 401, 403, 404, 413, 429),
        },
    }
}
T = TypeVar("T")


async def handle(request: Request, ctx: FunctionContext) -> Response:
    caller = await ctx.caller(request)
    if not caller.is_admin and caller.user_id is None:
        raise HttpError(403, "sign in to retry: a batch made with the anon key belongs to nobody")
    await ctx.rate_limit(caller, request)
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
    if failed_since is not None and not caller.is_admin:
        raise HttpError(403, "failed_since: admins only (it reaches every user's jobs)")
    async with ctx.pool.connection() as conn:
        if not caller.is_admin:
            await check_owner(conn, caller, batch_id, job_ids)
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
