"""GET /functions/v1/batch-events: progress as Server-Sent Events.

``?batch_id=A`` follows one batch and ends after its ``complete``; several ``batch_id``
follow them all on one stream; none follows every batch of the caller that is active
or becomes active (one stream per tab: browsers allow six connections per site).
Resumes after ``Last-Event-ID``; answers 204 to a reconnect after the end, which tells
EventSource to stop. EventSource cannot set headers: ``?access_token=`` is accepted.
"""

from __future__ import annotations

import contextlib
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response

from api.broker import BatchForbidden, BatchNotFound, parse_cursor
from api.context import FunctionContext
from api.errors import HttpError
from api.openapi import EVENT_STREAM, errors
from api.streams import event_stream

METHODS = ["GET"]
OPENAPI = {
    "get": {
        "operationId": "batchEvents",
        "summary": "Follow batches as server-sent events (one batch, several, or all of the caller's)",
        "parameters": [
            {
                "name": "batch_id",
                "in": "query",
                "required": False,
                "schema": {"type": "array", "items": {"type": "string", "format": "uuid"}},
            },
            {"name": "access_token", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "lastEventId", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {"description": "the events, replayed then live", "content": EVENT_STREAM},
            "204": {"description": "a reconnect after the batch's end: stop"},
            **errors(400, 401, 403, 404),
        },
    }
}


async def handle(request: Request, ctx: FunctionContext) -> Response:
    caller = await ctx.caller(request)
    try:
        batch_ids = [UUID(v) for value in request.query_params.getlist("batch_id") for v in value.split(",")]
    except ValueError:
        raise HttpError(400, "batch_id: must be a UUID") from None
    if not batch_ids and caller.kind == "anon":
        raise HttpError(403, "the anon key can follow only the batch it is creating; sign in to follow yours")
    last_event_id = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    try:
        cursors = parse_cursor(last_event_id, batch_ids)
    except ValueError:
        raise HttpError(400, "Last-Event-ID: not an id this server sent") from None

    resources = contextlib.AsyncExitStack()
    try:
        subscription = await resources.enter_async_context(
            ctx.broker.subscribe(caller, batch_ids or None, cursors)
        )
    except BatchNotFound as missing:
        raise HttpError(404, f"batch {missing} not found") from None
    except BatchForbidden as forbidden:
        raise HttpError(403, f"batch {forbidden} is not yours") from None
    if cursors and subscription.caught_up_and_finished:
        await resources.aclose()
        return Response(status_code=204)
    return event_stream(subscription, resources, ctx.settings.sse_ping_seconds)
