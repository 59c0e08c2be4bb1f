"""uvicorn embedded in a process that owns its signals (the services, the local stack)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator, Sequence

import uvicorn
from starlette.types import ASGIApp

from kernel.supervisor import ServiceFailed, Supervisor


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT and SIGTERM to the process that embeds it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_until_signal(
    app: ASGIApp,
    host: str,
    port: int,
    before_stop: Callable[[], None] | None = None,
    supervisors: Sequence[Supervisor] = (),
) -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C, or until a supervised task gave up (then it raises
    ServiceFailed, for a non-zero exit). No access log: query strings carry tokens."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    # proxy_headers off: uvicorn would otherwise take X-Forwarded-For as the client's address
    # from any connection made on this host; the app decides whom to believe (TRUSTED_PROXIES).
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
        proxy_headers=False,
    )
    server = EmbeddedServer(config)
    serving = asyncio.create_task(server.serve(), name="http")
    stop = asyncio.create_task(stopping.wait())
    failures = [asyncio.create_task(supervisor.failed.wait()) for supervisor in supervisors]
    await asyncio.wait([serving, stop, *failures], return_when=asyncio.FIRST_COMPLETED)
    if before_stop is not None:
        before_stop()
    server.should_exit = True
    for waiter in (stop, *failures):
        waiter.cancel()
    await serving
    failed = [
        name
        for supervisor in supervisors
        for name, state in supervisor.states.items()
        if state.state == "failed"
    ]
    if failed:
        raise ServiceFailed(f"background task(s) kept failing: {', '.join(failed)}")
