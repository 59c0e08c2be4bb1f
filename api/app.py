"""The HTTP app: the functions at /functions/v1/<name>, the progress page at /, /healthz and
/metrics; with a dispatcher in the same process (``zimage serve``), its RunPod webhook too."""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import httpx
import structlog
from prometheus_client import Gauge
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from api.auth import Authenticator
from api.broker import EventBroker
from api.context import FunctionContext
from api.errors import HttpError
from api.functions import function_routes, load_functions
from api.openapi import document
from api.ratelimit import RateLimiter, SharedRateLimiter
from api.settings import ApiSettings
from kernel.db import connection_pool
from kernel.metrics import metrics
from kernel.supervisor import Supervisor

log = structlog.get_logger("api")

# What the frontend's fetch, EventSource and supabase-js's functions.invoke send (the old edge
# function allowed the first four; invoke adds x-region when a region is chosen).
ALLOWED_HEADERS = [
    "authorization",
    "x-client-info",
    "apikey",
    "content-type",
    "accept",
    "last-event-id",
    "x-region",
    "idempotency-key",  # a retry that must not make a second batch (generate-images)
]
# What a browser script may read from an answer: a 429's Retry-After (hidden by CORS otherwise).
EXPOSED_HEADERS = ["retry-after"]
SSE_STREAMS = Gauge("zimage_sse_subscribers", "Open progress streams")
PAGE = files("api").joinpath("page.html").read_text()


@contextlib.asynccontextmanager
async def running_api(settings: ApiSettings) -> AsyncIterator[FunctionContext]:
    """The functions' shared state: a small pool for requests, the broker's LISTEN, the JWKS client."""
    pool = connection_pool(str(settings.database_url), max_size=8, check=True)
    await pool.open(wait=True, timeout=30)
    http = httpx.AsyncClient(timeout=10)
    broker = EventBroker(str(settings.database_url), settings.estimate_interval_seconds)
    tasks = Supervisor()
    tasks.start("event-broker", broker.run)
    SSE_STREAMS.set_function(lambda: len(broker.subscriptions()))
    try:
        yield FunctionContext(
            settings,
            pool,
            broker,
            Authenticator(settings, http),
            RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
            if settings.rate_limit_store == "memory"
            else SharedRateLimiter(pool, settings.rate_limit_per_minute, settings.rate_limit_burst),
            tasks,
        )
    finally:
        await tasks.close()
        await http.aclose()
        await pool.close()


@dataclass
class Extras:
    """What a dispatcher in the same process adds: its routes and its health."""

    routes: list[Route]
    health: Callable[[], dict[str, object]]


def build_app(context: FunctionContext, extras: Extras | None = None) -> Starlette:
    async def page(_: Request) -> Response:
        return HTMLResponse(PAGE)

    async def healthz(_: Request) -> Response:
        listening = context.broker.listener.connected.is_set()
        healthy = listening and context.tasks.healthy
        body: dict[str, Any] = {
            "status": "ok" if healthy else "degraded",
            "event_listener": listening,
            "tasks": context.tasks.health(),
        }
        if extras is not None:
            body["dispatcher"] = dispatcher = extras.health()
            healthy = healthy and dispatcher["status"] == "ok"
            if dispatcher["status"] != "ok":
                body["status"] = dispatcher["status"]
        return JSONResponse(body, status_code=200 if healthy else 503)

    functions = load_functions()
    openapi = document(functions, version=_version())

    async def openapi_json(_: Request) -> Response:
        return JSONResponse(openapi)

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/functions/v1/openapi.json", openapi_json, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *function_routes(context, functions),
        *(extras.routes if extras else []),
    ]
    cors = Middleware(
        CORSMiddleware,
        allow_origins=context.settings.cors_allowed_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age=86400,
    )
    return Starlette(
        routes=routes,
        middleware=[cors],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )


async def _http_error(_: Request, exc: Exception) -> Response:
    """Unknown routes and wrong methods answer JSON too: supabase-js reads error.context.json()."""
    assert isinstance(exc, HTTPException)
    return HttpError(exc.status_code, exc.detail, dict(exc.headers or {})).response()


async def _internal_error(_: Request, exc: Exception) -> Response:
    log.error("request.failed", error_type=type(exc).__name__)
    return HttpError(500, "internal error").response()


def _version() -> str:
    try:
        return importlib.metadata.version("zimage-pipeline")
    except importlib.metadata.PackageNotFoundError:
        return "0"
