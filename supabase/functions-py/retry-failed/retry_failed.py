"""POST /functions/v1/retry-failed (admin): requeue failed jobs.

Body ``{batch_id?, job_ids?, failed_since?}`` (ISO 8601); the filters combine and at
least one is required. Answers ``{requeued: n}``. Each requeued job starts again
from attempt 0, and followers of its batch see it come back (``requeued`` events,
then its progress as it runs again).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.context import FunctionContext, json_object
from api.errors import HttpError

METHODS = ["POST"]


async def handle(request: Request, ctx: FunctionContext) -> Response:
    ctx.admin_only(await ctx.caller(request))
    body = await json_object(request)
    batch_id = _parse(body, "batch_id", UUID)
    job_ids = body.get("job_ids")
    if job_ids is not None:
        if not isinstance(job_ids, list) or not job_ids:
            raise HttpError(400, "job_ids: must be a non-empty list of job ids")
        job_ids = [_parse({"job_ids": value}, "job_ids", UUID) for value in job_ids]
    failed_since = _parse(body, "failed_since", datetime.fromisoformat)
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


def _parse(body: dict[str, Any], name: str, parse: Any) -> Any:
    value = body.get(name)
    if value is None:
        return None
    try:
        return parse(value) if isinstance(value, str) else parse(str(value))
    except ValueError:
        raise HttpError(400, f"{name}: {value!r} is not valid") from None
