"""Serving an ASGI app with uvicorn inside the running event loop, on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn
from starlette.types import ASGIApp

from kernel.serving import EmbeddedServer


class LoopbackServer:
    """start() binds 127.0.0.1 on a free port and returns once listening; stop() closes it."""

    def __init__(self, app: ASGIApp, name: str, port: int = 0, websockets: bool = False) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=2,
            # Workers reuse one keep-alive connection between long jobs; uvicorn's 5 s default
            # would close it under them and their result POST would die with a broken pipe.
            timeout_keep_alive=300,
            ws="websockets-sansio" if websockets else "none",
            proxy_headers=False,  # as zimage serve: the app alone decides whose X-Forwarded-For to believe
        )
        self._server = EmbeddedServer(config)
        self._name = name
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> LoopbackServer:
        self._task = asyncio.create_task(self._server.serve(), name=f"serve-{self._name}")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the bind error
                raise RuntimeError(f"{self._name} server exited before it started")
            await asyncio.sleep(0.005)
        return self

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None


class _DropQuietly(logging.Filter):
    """Hide the tracebacks of connections the RunPod stand-in drops on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        from devstack.runpod_api import DroppedConnection

        return not (record.exc_info and isinstance(record.exc_info[1], DroppedConnection))


logging.getLogger("uvicorn.error").addFilter(_DropQuietly())
