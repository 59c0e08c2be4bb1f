"""GET /functions/v1/batch-status?batch_id=...: a batch's snapshot as JSON (owner or admin).

Each job's state, URL or error, attempts, and while it waits its place in the queue; the
batch's ``status_url``, ``events_url`` and ``cancel_url``, and each job's.
"""

from __future__ import annotations

from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.batches import batch_snapshot
from api.context import FunctionContext
from api.errors import HttpError
from api.links import base_url, with_links
from api.openapi import errors, json_answer

METHODS = ["GET"]
OPENAPI = {
    "get": {
        "operationId": "batchStatus",
        "summary": "A batch's jobs, states, places in the queue and estimates",
        "parameters": [
            {
                "name": "batch_id",
                "in": "query",
                "required": True,
                "schema": {"type": "string", "format": "uuid"},
            },
            {"name": "access_token", "in": "query", "required": False, "schema": {"type": "string"}},
        ],
        "responses": {"200": json_answer("the batch", "BatchStatus"), **errors(400, 401, 403, 404)},
    }
}


async def handle(request: Request, ctx: FunctionContext) -> Response:
    caller = await ctx.caller(request)
    try:
        batch_id = UUID(request.query_params.get("batch_id", ""))
    except ValueError:
        raise HttpError(400, "batch_id: a batch id (UUID) is required") from None
    async with ctx.pool.connection() as conn:
        snapshot = await batch_snapshot(conn, batch_id)
    if snapshot is None:
        raise HttpError(404, f"batch {batch_id} not found")
    owner = UUID(snapshot["user_id"]) if snapshot["user_id"] else None
    if not caller.may_see(owner):
        raise HttpError(403, f"batch {batch_id} is not yours")
    return JSONResponse(with_links(snapshot, base_url(request, ctx.settings.public_url)))
