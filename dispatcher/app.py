"""The dispatcher's HTTP routes: RunPod's webhook, /healthz and /metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from uuid import UUID

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dispatcher.core import Dispatcher
from dispatcher.webhook import token_is_valid


def dispatcher_routes(
    dispatcher: Dispatcher, pool: AsyncConnectionPool, wakeups: Mapping[str, asyncio.Event]
) -> list[Route]:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok", **dispatcher_health(dispatcher, wakeups)})

    return [
        webhook_route(dispatcher, pool),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


async def metrics(_: Request) -> Response:
    """Prometheus' text format: every metric of the process (the app's and the dispatcher's)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def dispatcher_health(dispatcher: Dispatcher, wakeups: Mapping[str, asyncio.Event]) -> dict[str, object]:
    """What it holds, and whether each wake-up source is connected (if not, the sweep alone
    picks jobs up: slower, never lost)."""
    return {
        "dispatcher_id": dispatcher.settings.dispatcher_id,
        "in_flight": len(dispatcher.active),
        "wakeup": {name: connected.is_set() for name, connected in wakeups.items()},
    }


def webhook_route(dispatcher: Dispatcher, pool: AsyncConnectionPool) -> Route:
    """POST /runpod/webhook/{job_id}/{attempt}?token=...: RunPod's completion callback."""
    secret = dispatcher.settings.webhook_secret.get_secret_value()

    async def runpod_webhook(request: Request) -> Response:
        try:
            job_id, attempt = UUID(request.path_params["job_id"]), int(request.path_params["attempt"])
        except ValueError:
            return JSONResponse({"error": "not found"}, status_code=404)
        if not token_is_valid(secret, job_id, attempt, request.query_params.get("token", "")):
            return JSONResponse({"error": "invalid webhook token"}, status_code=401)
        try:
            payload = json.loads(await request.body())
        except json.JSONDecodeError:
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        if not isinstance(payload, dict):
            return JSONResponse({"error": "body is not a JSON object"}, status_code=400)
        if not dispatcher.deliver_webhook(job_id, attempt, payload):
            # Another replica runs this job: wake it (it confirms with one status call).
            async with pool.connection() as conn:
                await conn.execute("select pg_notify('image_job_completed', %s)", (str(job_id),))
        return JSONResponse({"received": True})

    return Route("/runpod/webhook/{job_id}/{attempt}", runpod_webhook, methods=["POST"])
