"""Every background loop of the dispatcher runs under a supervisor that /healthz reports on."""

from __future__ import annotations

import asyncio

import httpx

from kernel.supervisor import RestartPolicy
from tests.integration.dispatcher.conftest import Cloud, DispatcherFactory, insert_batch, wait_for_batch

FAST = RestartPolicy(max_restarts=2, initial_backoff_s=0.01, max_backoff_s=0.02)


async def test_healthz_lists_every_loop_and_turns_503_naming_one_that_gave_up(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=1, seconds="0.05")
    async with dispatcher() as service:
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service.app()), base_url="http://dispatcher"
        )
        health = (await http.get("/healthz")).json()
        assert set(health["tasks"]) == {
            "claim-loop",
            "lease-renewer",
            "endpoint-prober",
            "capacity-watcher",
            "capacity-publisher",
            "wakeup-postgres",
        }
        assert {task["state"] for task in health["tasks"].values()} == {"running"}

        async def broken() -> None:
            raise RuntimeError("a bug")

        # A loop beside the real ones that keeps dying: the supervisor gives up on it.
        service.supervisor.start("broken-loop", broken, FAST)
        await asyncio.wait_for(service.supervisor.failed.wait(), 60)
        answer = await http.get("/healthz")
        assert answer.status_code == 503
        assert answer.json()["status"] == "unavailable"
        assert answer.json()["tasks"]["broken-loop"] == {
            "state": "failed",
            "restarts": FAST.max_restarts,
            "last_error": "RuntimeError: a bug",
        }
        # the others are untouched and still do their work until the process is restarted
        assert answer.json()["tasks"]["claim-loop"]["state"] == "running"
        batch = await insert_batch(database_url, ["still claimed"])
        assert (await wait_for_batch(database_url, batch))["failed"] == 0
        await http.aclose()
