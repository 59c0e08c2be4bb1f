"""POST /functions/v1/generate-images: the old edge function's contract, on the pipeline.

Body ``{prompts, quality?, aspectRatio?, projectId?, seed?, format?, output_quality?, webhook?,
webhook_events?, stream?, wait?}``; prompts are strings or ``{index, prompt, startTime, endTime}``;
``webhook`` is an https URL to be called, signed, with the batch's ``webhook_events`` (``image``,
``failed``, ``complete``; ``complete`` by default). The batch is inserted as the caller
(RLS applies) and the dispatcher takes it from there. Then:
- ``stream: true``: the batch's progress as SSE, ending with ``complete``;
- ``wait: false``: ``202 {batch_id, status_url, events_url, cancel_url}`` at once;

With an ``Idempotency-Key`` header used before by the same caller with the same body (within 24
hours), no batch is made: the answer is the first one's batch (``200`` instead of ``202``, or its
stream, or its result); with another body, ``422``.
- otherwise: ``{success, images, total, failed, batch_id}`` once the batch is done, or, if it is
  not done within WAIT_LIMIT_SECONDS (120 by default: before a proxy's idle timeout cuts the
  request silently), ``202`` with the links, as ``wait: false`` answers at once.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.batches import BODY_SCHEMA, BatchRequest, insert_batch
from api.context import FunctionContext
from api.errors import HttpError
from api.idempotency import IdempotencyKey
from api.links import base_url, batch_links
from api.openapi import EVENT_STREAM, errors, json_answer
from api.streams import event_stream
from kernel.webhook_targets import allowed_hosts

METHODS = ["POST"]
# What a client does next with the batch_id of either answer.
LINKS = {
    "status": {"operationId": "batchStatus", "parameters": {"batch_id": "$response.body#/batch_id"}},
    "cancel": {"operationId": "cancel", "requestBody": {"batch_id": "$response.body#/batch_id"}},
}
OPENAPI = {
    "post": {
        "operationId": "generateImages",
        "summary": "Submit a batch of prompts",
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
                "description": "the same key and body within 24 hours answer the first batch (200)",
            }
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": BODY_SCHEMA}}},
        "responses": {
            "200": {
                "description": "the batch is done (or, with an Idempotency-Key used before, the first batch)",
                "links": LINKS,
                "content": {
                    "application/json": {
                        "schema": {
                            "anyOf": [
                                {"$ref": "#/components/schemas/Complete"},
                                {"$ref": "#/components/schemas/Links"},
                            ]
                        }
                    },
                    **EVENT_STREAM,
                },
            },
            "202": {
                **json_answer("accepted: wait false, or a batch longer than WAIT_LIMIT_SECONDS", "Links"),
                "links": LINKS,
            },
            **errors(400, 401, 403, 413, 422, 429),
        },
    }
}


async def handle(request: Request, ctx: FunctionContext) -> Response:
    caller = await ctx.caller(request)
    await ctx.rate_limit(caller, request)
    body = await ctx.json_body(request)
    batch = BatchRequest.from_body(body, allowed_hosts(ctx.settings.outbound_webhook_allowed_hosts))
    once = IdempotencyKey.of(
        request.headers.get("idempotency-key"), caller, ctx.client_address(request), body
    )
    async with ctx.pool.connection() as conn:
        batch_id, replayed = await insert_batch(conn, caller, batch, once)

    links = batch_links(base_url(request, ctx.settings.public_url), batch_id)
    accepted = JSONResponse({"batch_id": str(batch_id), **links}, status_code=200 if replayed else 202)
    if body.get("wait") is False and not body.get("stream"):
        return accepted
    resources = contextlib.AsyncExitStack()
    # trusted: a batch made with the anon key belongs to nobody, but its creator's stream follows it.
    subscription = await resources.enter_async_context(
        ctx.broker.subscribe(caller, [batch_id], {}, trusted=True)
    )
    if body.get("stream"):
        return event_stream(subscription, resources, ctx.settings.sse_ping_seconds)
    async with resources:
        try:
            async with asyncio.timeout(ctx.settings.wait_limit_seconds):
                async for event in subscription.events():
                    if event.kind == "complete":
                        return JSONResponse({**event.payload, "batch_id": str(batch_id)})
        except TimeoutError:
            return accepted  # it goes on; the links follow it
    raise HttpError(503, "the server is shutting down; the batch goes on: follow it with batch-events")
