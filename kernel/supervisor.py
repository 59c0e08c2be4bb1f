"""Supervised background tasks: a loop that dies is restarted with backoff, and one that keeps
dying brings the process down with a non-zero exit, so the orchestrator restarts it.

Without this, a loop that raised an unexpected error would be gone in silence: the process
would answer /healthz while its jobs stopped. Each loop's state is in ``health()``, which
/healthz reports; ``failed`` is set when one gave up, and the process's serve loop
(kernel.serving.serve_until_signal) then stops and exits with ServiceFailed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from prometheus_client import Counter

from kernel.logs import first_line

log = structlog.get_logger("kernel.supervisor")

TASK_RESTARTS = Counter(
    "zimage_background_task_restarts_total", "Background tasks restarted after an error", ["task"]
)


class ServiceFailed(Exception):
    """A supervised task kept failing: the process should exit non-zero."""


@dataclass
class TaskState:
    state: str = "running"  # running | restarting | finished | failed
    restarts: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class RestartPolicy:
    """At most ``max_restarts`` restarts within ``window_s``; waits double from ``initial_backoff_s``."""

    max_restarts: int = 5
    window_s: float = 60.0
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0


class Supervisor:
    def __init__(self, policy: RestartPolicy | None = None) -> None:
        self.policy = policy or RestartPolicy()
        self.states: dict[str, TaskState] = {}
        self.failed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(
        self, name: str, loop: Callable[[], Awaitable[None]], policy: RestartPolicy | None = None
    ) -> None:
        """Run ``loop()`` under supervision (by ``policy``, else the supervisor's); a loop that
        returns is finished, not restarted."""
        self.states[name] = TaskState()
        task = asyncio.create_task(self._supervise(name, loop, policy or self.policy), name=name)
        self._tasks.append(task)

    def health(self) -> dict[str, dict[str, object]]:
        return {name: vars(state).copy() for name, state in self.states.items()}

    @property
    def healthy(self) -> bool:
        return all(state.state in ("running", "finished") for state in self.states.values())

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _supervise(self, name: str, loop: Callable[[], Awaitable[None]], policy: RestartPolicy) -> None:
        state = self.states[name]
        recent: list[float] = []
        backoff = policy.initial_backoff_s
        while True:
            try:
                await loop()
            except Exception as error:  # the point: whatever it was, it is reported and handled
                state.last_error = f"{type(error).__name__}: {first_line(error)}"
                now = time.monotonic()
                recent = [moment for moment in recent if now - moment < policy.window_s] + [now]
                if len(recent) > policy.max_restarts:
                    state.state = "failed"
                    log.critical("task.failed", task=name, error=state.last_error, restarts=state.restarts)
                    self.failed.set()
                    return
                state.state = "restarting"
                log.error("task.died", task=name, error=state.last_error, restart_in_s=backoff, exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, policy.max_backoff_s)
                state.restarts += 1
                TASK_RESTARTS.labels(task=name).inc()
                state.state = "running"
            else:
                state.state = "finished"
                return
