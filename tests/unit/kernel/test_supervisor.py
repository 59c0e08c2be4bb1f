"""The supervisor: a loop that dies is restarted with backoff; one that keeps dying gives up,
and the serve loop then ends with ServiceFailed (a non-zero exit)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from kernel.serving import serve_until_signal
from kernel.supervisor import RestartPolicy, ServiceFailed, Supervisor

FAST = RestartPolicy(max_restarts=3, window_s=60, initial_backoff_s=0.01, max_backoff_s=0.02)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_loop_that_dies_once_is_restarted_and_reported() -> None:
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("a bug on the first run")
        await asyncio.Event().wait()

    supervisor = Supervisor(FAST)
    supervisor.start("flaky", flaky)
    await wait_for(lambda: len(runs) == 2)
    health = supervisor.health()["flaky"]
    assert health == {"state": "running", "restarts": 1, "last_error": "RuntimeError: a bug on the first run"}
    assert supervisor.healthy
    assert not supervisor.failed.is_set()
    await supervisor.close()


async def test_a_loop_that_keeps_dying_gives_up_and_says_which() -> None:
    async def broken() -> None:
        raise ValueError("always")

    async def fine() -> None:
        await asyncio.Event().wait()

    supervisor = Supervisor(FAST)
    supervisor.start("broken", broken)
    supervisor.start("fine", fine)
    await asyncio.wait_for(supervisor.failed.wait(), 5)
    assert supervisor.health()["broken"]["state"] == "failed"
    assert supervisor.health()["broken"]["restarts"] == FAST.max_restarts
    assert supervisor.health()["fine"]["state"] == "running"
    assert not supervisor.healthy
    await supervisor.close()


async def test_a_loop_that_returns_is_finished_not_restarted() -> None:
    runs: list[int] = []

    async def once() -> None:
        runs.append(1)

    supervisor = Supervisor(FAST)
    supervisor.start("once", once)
    await wait_for(lambda: supervisor.health()["once"]["state"] == "finished")
    await asyncio.sleep(0.05)
    assert runs == [1]
    assert supervisor.healthy
    await supervisor.close()


async def test_the_serve_loop_ends_with_service_failed_when_a_task_gives_up() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("no request is made")

    async def broken() -> None:
        raise OSError("gone")

    supervisor = Supervisor(FAST)
    supervisor.start("claim-loop", broken)
    with pytest.raises(ServiceFailed, match="claim-loop"):
        await asyncio.wait_for(serve_until_signal(app, "127.0.0.1", 0, supervisors=[supervisor]), 10)
    await supervisor.close()
