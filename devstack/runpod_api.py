"""HTTP face of the RunPod stand-in: RunPod's serverless API under ``/v2/{endpoint_id}/``.

Public routes (``Authorization: Bearer <api key>``): run, runsync, status, cancel,
health, purge-queue. Worker routes (``Authorization: <worker key>``, as the runpod
SDK sends it): job-take, job-take-batch, job-stop, job-done, ping. Control routes
for tests and benchmarks: ``/_devstack/counters`` and ``/_devstack/faults``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devstack.runpod_platform import FINAL_STATES, Platform

PUBLIC_ROUTES = frozenset({"run", "runsync", "status", "cancel", "health", "purge-queue"})
MAX_RUN_BODY_BYTES = 10 * 1024 * 1024  # RunPod's /run payload limit


class DroppedConnection(Exception):
    """Raised after the response headers went out, so the client never gets the body."""


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def build_runpod_app(
    platform: Platform, api_key: str, worker_key: str, take_timeout_s: float = 10
) -> ASGIApp:
    platform.api_key = api_key

    def endpoint(request: Request) -> str | None:
        endpoint_id = str(request.path_params["endpoint_id"])
        return endpoint_id if endpoint_id in platform.endpoint_ids else None

    def public(handler: Any) -> Any:
        async def guarded(request: Request) -> Response:
            key = platform.endpoint_api_keys.get(str(request.path_params["endpoint_id"]), platform.api_key)
            if request.headers.get("authorization") != f"Bearer {key}":
                return error(401, "Unauthorized: missing or invalid API key")
            if endpoint(request) is None:
                return error(404, "endpoint not found")
            response: Response = await handler(request)
            return response

        return guarded

    def worker(handler: Any) -> Any:
        async def guarded(request: Request) -> Response:
            if request.headers.get("authorization") != worker_key:
                return error(401, "Unauthorized worker")
            if endpoint(request) is None:
                return error(404, "endpoint not found")
            response: Response = await handler(request)
            return response

        return guarded

    async def submit(request: Request) -> dict[str, Any] | Response:
        if int(request.headers.get("content-length") or 0) > MAX_RUN_BODY_BYTES:
            return error(413, f"request body over {MAX_RUN_BODY_BYTES} bytes")
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return error(400, "body is not JSON")
        if not isinstance(body, dict) or "input" not in body:
            return error(400, "input is required")
        job = await platform.submit(request.path_params["endpoint_id"], body)
        return {"job": job}

    async def run(request: Request) -> Response:
        submitted = await submit(request)
        if isinstance(submitted, Response):
            return submitted
        return JSONResponse({"id": submitted["job"].id, "status": "IN_QUEUE"})

    async def runsync(request: Request) -> Response:
        submitted = await submit(request)
        if isinstance(submitted, Response):
            return submitted
        job = submitted["job"]
        wait_ms = min(int(request.query_params.get("wait", 90_000)), 300_000)
        await platform.wait_final(job, wait_ms / 1000)
        if job.status in FINAL_STATES:
            return JSONResponse(job.envelope())
        return JSONResponse({"id": job.id, "status": job.status.value})

    async def status(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        job = platform.get(request.path_params["endpoint_id"], job_id)
        if job is None and platform.faults_for(request.path_params["endpoint_id"]).unknown_job_as_failed:
            return JSONResponse({"id": job_id, "status": "FAILED", "error": "Job ID not found"})
        if job is None:
            return error(404, "request does not exist")
        return JSONResponse(job.envelope())

    async def cancel(request: Request) -> Response:
        job = platform.get(request.path_params["endpoint_id"], request.path_params["job_id"])
        if job is None:
            return error(404, "request does not exist")
        platform.cancel(job)
        return JSONResponse({"id": job.id, "status": job.status.value})

    async def health(request: Request) -> Response:
        return JSONResponse(platform.health(request.path_params["endpoint_id"]))

    async def purge_queue(request: Request) -> Response:
        removed = platform.purge_queue(request.path_params["endpoint_id"])
        return JSONResponse({"removed": removed, "status": "completed"})

    async def job_take(request: Request) -> Response:
        batch = request.url.path.split("/")[3] == "job-take-batch"
        size = max(1, int(request.query_params.get("batch_size", 1))) if batch else 1
        jobs = await platform.take(
            request.path_params["endpoint_id"], request.path_params["worker_id"], size, take_timeout_s
        )
        if not jobs:
            return Response(status_code=204)
        taken = [{"id": job.id, "input": job.input} for job in jobs]
        return JSONResponse(taken if batch else taken[0])

    async def job_stop(request: Request) -> Response:
        signals = await platform.stop_signals(request.path_params["worker_id"], take_timeout_s)
        return JSONResponse({"jobsToStop": signals}) if signals else Response(status_code=204)

    async def job_done(request: Request) -> Response:
        # The SDK posts JSON text under a form content type.
        try:
            result = json.loads(await request.body())
        except json.JSONDecodeError:
            return error(400, "result is not JSON")
        platform.report(request.path_params["job_id"], request.path_params["worker_id"], result)
        return JSONResponse({})

    async def ping(request: Request) -> Response:
        platform.ping(request.path_params["worker_id"])
        return JSONResponse({})

    async def counters(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {api_key}":
            return error(401, "Unauthorized")
        return JSONResponse(platform.counters.as_json())

    async def faults(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {api_key}":
            return error(401, "Unauthorized")
        if request.method == "POST":
            try:
                platform.faults.update(await request.json())
            except (ValueError, TypeError) as exc:
                return error(400, str(exc))
        return JSONResponse(vars(platform.faults))

    prefix = "/v2/{endpoint_id}"
    app = Starlette(
        routes=[
            Route(f"{prefix}/run", public(run), methods=["POST"]),
            Route(f"{prefix}/runsync", public(runsync), methods=["POST"]),
            Route(f"{prefix}/status/{{job_id}}", public(status), methods=["GET", "POST"]),
            Route(f"{prefix}/cancel/{{job_id}}", public(cancel), methods=["POST"]),
            Route(f"{prefix}/health", public(health), methods=["GET"]),
            Route(f"{prefix}/purge-queue", public(purge_queue), methods=["POST"]),
            Route(f"{prefix}/job-take/{{worker_id}}", worker(job_take), methods=["GET"]),
            Route(f"{prefix}/job-take-batch/{{worker_id}}", worker(job_take), methods=["GET"]),
            Route(f"{prefix}/job-stop/{{worker_id}}", worker(job_stop), methods=["GET"]),
            Route(f"{prefix}/job-done/{{worker_id}}/{{job_id}}", worker(job_done), methods=["POST"]),
            Route(f"{prefix}/ping/{{worker_id}}", worker(ping), methods=["GET"]),
            Route("/_devstack/counters", counters, methods=["GET"]),
            Route("/_devstack/faults", faults, methods=["GET", "POST"]),
        ]
    )
    return FaultInjection(app, platform)


class FaultInjection:
    """Counts every /v2 request by route and status, and makes public routes misbehave on demand."""

    def __init__(self, app: ASGIApp, platform: Platform) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = scope["path"].split("/") if scope["type"] == "http" else []
        if len(parts) < 4 or parts[1] != "v2":
            await self.app(scope, receive, send)
            return
        route = parts[3]
        faults, draw = self.platform.faults_for(parts[2]), self.platform.random.random
        counted = self._counting(route, send)
        if route == "status" and len(parts) > 4:  # every request received, answered or refused
            self.platform.counters.status_polls[parts[4]] += 1
        if route not in PUBLIC_ROUTES:
            await self.app(scope, receive, counted)
            return
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)
        if faults.rate_limits and not self.platform.rate_limiter.allow(parts[2], route):
            await error(429, "rate limit exceeded", {"Retry-After": "10"})(scope, receive, counted)
        elif draw() < faults.rate_429:
            retry_after = {"Retry-After": f"{faults.retry_after_s:g}"}
            await error(429, "too many requests", retry_after)(scope, receive, counted)
        elif draw() < faults.rate_5xx:
            status = self.platform.random.choice((500, 502, 503))
            await error(status, "injected server error")(scope, receive, counted)
        elif route == "status" and draw() < faults.rate_status_400:
            await error(400, "injected bad request")(scope, receive, counted)
        elif draw() < faults.rate_drop:
            await self.app(scope, receive, self._dropping(counted))
        else:
            await self.app(scope, receive, counted)

    def _counting(self, route: str, send: Send) -> Send:
        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.platform.counters.requests[(route, message["status"])] += 1
            await send(message)

        return counted

    @staticmethod
    def _dropping(send: Send) -> Send:
        async def dropped(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.start":
                raise DroppedConnection

        return dropped
