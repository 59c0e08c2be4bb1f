"""POST /functions/v1/cancel: cancel a batch's unfinished jobs, or some jobs, for their owner
or an admin.

Body ``{batch_id}`` or ``{job_ids: [...]}`` (both: the batch's jobs among those), or the same
as the query (``?batch_id=...``, ``?job_id=...``: the ``cancel_url`` of the other answers).
Answers ``{cancelled: n}``. Queued jobs are cancelled at once; a job in flight is cancelled
too, and its dispatcher cancels the RunPod job when it next renews its lease. Followers of the
batch see ``cancelled`` events, and its ``complete`` once nothing is left to do. Batches made
with the anon key belong to nobody: only an admin can cancel them.
"""

from __future__ import annotations

from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.context import FunctionContext
from api.errors import HttpError
from api.openapi import errors
from api.ownership import check_owner
from api.queries import QUERIES

METHODS = ["POST"]
OPENAPI = {
    "post": {
        "operationId": "cancel",
        "summary": "Cancel a batch's unfinished jobs, or some jobs",
        "parameters": [
            {
                "name": "batch_id",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "format": "uuid"},
            },
            {
                "name": "job_id",
                "in": "query",
                "required": False,
                "schema": {"type": "array", "items": {"type": "string", "format": "uuid"}},
            },
        ],
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "batch_id": {"type": "string", "format": "uuid"},
                            "job_ids": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": 1000,
                                "items": {"type": "string", "format": "uuid"},
                            },
                        },
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "how many jobs were cancelled",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["cancelled"],
                            "properties": {"cancelled": {"type": "integer"}},
                        }
                    }
                },
            },
            **errors(400, 401, 403, 404, 413, 429),
        },
    }
}


async def handle(request: Request, ctx: FunctionContext) -> Response:
    caller = await ctx.caller(request)
    await ctx.rate_limit(caller, request)
    body = await ctx.json_body(request) if await _has_body(request) else {}
    batch_id = _uuid("batch_id", body.get("batch_id", request.query_params.get("batch_id")))
    job_ids = _job_ids(body.get("job_ids"), request.query_params.getlist("job_id"))
    if batch_id is None and job_ids is None:
        raise HttpError(400, "give batch_id or job_ids")
    if not caller.is_admin and caller.user_id is None:
        raise HttpError(403, "sign in to cancel: a batch made with the anon key belongs to nobody")
    async with ctx.pool.connection() as conn:
        await check_owner(conn, caller, batch_id, job_ids)
        row = await (
            await conn.execute(
                QUERIES["cancel_jobs"],
                {
                    "batch_id": batch_id,
                    "job_ids": job_ids,
                    "for_user": None if caller.is_admin else caller.user_id,
                },
            )
        ).fetchone()
    return JSONResponse({"cancelled": row[0] if row else 0})


async def _has_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") not in ("", "0") or "chunked" in request.headers.get(
        "transfer-encoding", ""
    )


def _uuid(name: str, value: object) -> UUID | None:
    if value is None:
        return None
    try:
        return UUID(str(value))
    except ValueError:
        raise HttpError(400, f"{name}: {str(value)[:80]!r} is not a UUID") from None


def _job_ids(from_body: object, from_query: list[str]) -> list[UUID] | None:
    if from_body is None and not from_query:
        return None
    values = from_body if from_body is not None else from_query
    if not isinstance(values, list) or not values or len(values) > 1000:
        raise HttpError(400, "job_ids: must be a list of 1 to 1000 job ids")
    return [_uuid("job_ids", value) or _missing() for value in values]


def _missing() -> UUID:
    raise HttpError(400, "job_ids: a job id is null")
