"""The dispatcher's HTTP routes: RunPod's webhook, /healthz and /metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from uuid import UUID

import structlog
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dispatcher.core import Dispatcher
from dispatcher.metrics import WEBHOOKS_REFUSED
from dispatcher.webhook import token_is_valid
from kernel.bodies import read_body
from kernel.metrics import metrics

log = structlog.get_logger("dispatcher.webhook")
# A result carries the image base64 (RunPod caps results near 10 MiB, its webhook body
# more with the envelope): anything far beyond that is not RunPod's.
MAX_WEBHOOK_BODY_BYTES = 32 * 1024 * 1024


def dispatcher_routes(
    dispatcher: Dispatcher, pool: AsyncConnectionPool, wakeups: Mapping[str, asyncio.Event]
) -> list[Route]:
    async def healthz(_: Request) -> Response:
        health = dispatcher_health(dispatcher, wakeups)
        return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)

    return [
        webhook_route(dispatcher, pool),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def dispatcher_health(dispatcher: Dispatcher, wakeups: Mapping[str, asyncio.Event]) -> dict[str, object]:
    """What it holds, whether each wake-up source is connected (if not, the sweep alone
    picks jobs up: slower, never lost), and which RunPod endpoints refuse our key (when all
    do, nothing can run: the status is "unavailable", and /healthz answers 503)."""
    paused = sorted(dispatcher.endpoints.unauthorized)
    return {
        "status": "unavailable" if dispatcher.endpoints.all_paused else "ok",
        "dispatcher_id": dispatcher.settings.dispatcher_id,
        "runpod_endpoints_refusing_key": paused,
        "in_flight": len(dispatcher.active),
        "wakeup": {name: connected.is_set() for name, connected in wakeups.items()},
    }


def webhook_route(dispatcher: Dispatcher, pool: AsyncConnectionPool) -> Route:
    """POST /runpod/webhook/{job_id}/{submission}?token=...: RunPod's completion callback.
    Every refusal is answered 4xx, logged and counted by reason."""
    secret = dispatcher.settings.webhook_secret.get_secret_value()

    def refuse(status: int, reason: str, **fields: object) -> Response:
        WEBHOOKS_REFUSED.labels(reason=reason).inc()
        log.warning("webhook.refused", reason=reason, **fields)
        return JSONResponse({"error": reason}, status_code=status)

    async def runpod_webhook(request: Request) -> Response:
        try:
            job_id = UUID(request.path_params["job_id"])
            submission = int(request.path_params["submission"])
        except ValueError:
            return refuse(404, "not a webhook URL")
        if not token_is_valid(secret, job_id, submission, request.query_params.get("token", "")):
            return refuse(401, "invalid webhook token", job_id=str(job_id))
        body = await read_body(request, MAX_WEBHOOK_BODY_BYTES)
        if body is None:
            return refuse(413, "body too large", job_id=str(job_id))
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return refuse(400, "body is not JSON", job_id=str(job_id))
        if not isinstance(payload, dict):
            return refuse(400, "body is not a JSON object", job_id=str(job_id))
        outcome = dispatcher.deliver_webhook(job_id, submission, payload)
        if outcome == "elsewhere":
            # Another replica may run this job: wake it (it confirms with one status call of
            # its own, so nothing in this body is trusted there).
            async with pool.connection() as conn:
                await conn.execute("select pg_notify('image_job_completed', %s)", (str(job_id),))
        elif outcome != "delivered":
            return refuse(409, outcome, job_id=str(job_id), submission=submission)
        return JSONResponse({"received": True})

    return Route("/runpod/webhook/{job_id}/{submission}", runpod_webhook, methods=["POST"])
