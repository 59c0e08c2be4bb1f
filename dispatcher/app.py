"""The dispatcher's HTTP routes: RunPod's webhook, /healthz and /metrics."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from uuid import UUID

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dispatcher.claiming import Dispatcher
from dispatcher.domain import StoreUnavailable
from dispatcher.metrics import WEBHOOKS_ACCEPTED, WEBHOOKS_REFUSED
from dispatcher.webhook import token_is_valid
from kernel.bodies import read_body
from kernel.metrics import metrics

if TYPE_CHECKING:
    from dispatcher.service import Service

log = structlog.get_logger("dispatcher.webhook")
# A result carries the image base64 (RunPod caps results near 10 MiB, its webhook body
# more with the envelope): anything far beyond that is not RunPod's.
MAX_WEBHOOK_BODY_BYTES = 32 * 1024 * 1024


def dispatcher_routes(service: Service) -> list[Route]:
    async def healthz(_: Request) -> Response:
        health = dispatcher_health(service)
        return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)

    return [
        webhook_route(service.dispatcher),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def dispatcher_health(service: Service) -> dict[str, object]:
    """What it holds, whether each wake-up source is connected (if not, the sweep alone picks
    jobs up: slower, never lost), which RunPod endpoints refuse our key, and the state of each
    background loop. The status is "unavailable" (and /healthz answers 503) when nothing can
    run: every endpoint refuses the key, or a loop is down (restarting, or given up)."""
    dispatcher = service.dispatcher
    paused = sorted(dispatcher.endpoints.unauthorized)
    down = dispatcher.endpoints.all_paused or not service.supervisor.healthy
    return {
        "status": "unavailable" if down else "ok",
        "dispatcher_id": dispatcher.settings.dispatcher_id,
        "runpod_endpoints_refusing_key": paused,
        "in_flight": len(dispatcher.active),
        "wakeup": {name: connected.is_set() for name, connected in service.wakeups.items()},
        "tasks": service.supervisor.health(),
    }


def webhook_route(dispatcher: Dispatcher) -> Route:
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
            try:
                await dispatcher.store.announce_completion(job_id)
            except StoreUnavailable as exc:  # RunPod retries the delivery; a poll is the net
                log.warning("webhook.not_forwarded", job_id=str(job_id), error=str(exc))
                return JSONResponse({"error": "database unavailable"}, status_code=503)
            WEBHOOKS_ACCEPTED.labels(outcome="forwarded").inc()
            log.info("webhook.forwarded", job_id=str(job_id), submission=submission)
        elif outcome != "delivered":
            return refuse(409, outcome, job_id=str(job_id), submission=submission)
        else:
            WEBHOOKS_ACCEPTED.labels(outcome="delivered").inc()
        return JSONResponse({"received": True})

    return Route("/runpod/webhook/{job_id}/{submission}", runpod_webhook, methods=["POST"])
