"""Crashes and company: a SIGKILLed dispatcher, two dispatchers at once, a Postgres restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from devstack.postgres import PostgresCluster, free_port
from tests.integration.dispatcher.conftest import (
    API_KEY,
    ENDPOINTS,
    Cloud,
    DispatcherFactory,
    events_of,
    insert_batch,
    jobs_of,
    wait_for_batch,
    wait_until,
)


def dispatcher_process(database_url: str, cloud: Cloud, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SUPABASE_URL": cloud.storage_server.url,
        "SUPABASE_SERVICE_ROLE_KEY": cloud.keys.service_role_key,
        "RUNPOD_API_KEY": API_KEY,
        "RUNPOD_ENDPOINT_ID": ENDPOINTS[0],
        "RUNPOD_ENDPOINT_BASE_URL": f"{cloud.runpod_server.url}/v2",
        "LEASE_SECONDS": "2",
        "SWEEP_INTERVAL_SECONDS": "0.5",
        "DISPATCHER_ID": "doomed",
    }
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "zimage.cli", "dispatch", "--port", str(free_port())],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


async def test_a_killed_dispatchers_jobs_are_finished_by_the_next_without_paying_twice(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory, tmp_path: Path
) -> None:
    cloud.add_workers(count=4, seconds="1.5")
    doomed = dispatcher_process(database_url, cloud, tmp_path / "doomed.log")
    try:
        batch_id = await insert_batch(database_url, [f"the siege of Troy, part {n}" for n in range(8)])

        async def some_in_flight() -> bool:
            jobs = await jobs_of(database_url, batch_id)
            return sum(job["runpod_job_id"] is not None for job in jobs) >= 4

        await wait_until(some_in_flight, timeout_s=30)
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
    in_flight = [job for job in await jobs_of(database_url, batch_id) if job["lease_owner"] == "doomed"]
    assert in_flight, "the dispatcher died holding jobs"
    async with dispatcher(dispatcher_id="successor", lease_seconds=2):
        complete = await wait_for_batch(database_url, batch_id, timeout_s=60)
    jobs = await jobs_of(database_url, batch_id)
    assert complete["failed"] == 0
    assert [job["status"] for job in jobs] == ["succeeded"] * 8
    assert all(count == 1 for count in cloud.storage.writes.values()), "no image stored twice"
    assert len(cloud.storage.writes) == 8
    resubmissions = sum(job["resubmissions"] for job in jobs)
    assert cloud.platform.counters.submits == 8 + resubmissions, "a second GPU run only when explained"
    events = await events_of(database_url, batch_id)
    assert sum(kind == "resumed" for kind, _ in events) >= 1, "the successor resumed polling RunPod's job"
    explained = [payload["reason"] for kind, payload in events if kind == "resubmitted"]
    assert len(explained) == resubmissions


async def test_two_dispatchers_share_the_work_without_doing_any_twice(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=8, seconds="0.05")
    async with dispatcher(dispatcher_id="one"), dispatcher(dispatcher_id="two"):
        batches = [
            await insert_batch(database_url, [f"batch {b} scene {n}" for n in range(10)]) for b in range(4)
        ]
        for batch_id in batches:
            await wait_for_batch(database_url, batch_id)
    claimed: list[Any] = []
    for batch_id in batches:
        claimed += [payload for kind, payload in await events_of(database_url, batch_id) if kind == "claimed"]
        assert {job["status"] for job in await jobs_of(database_url, batch_id)} == {"succeeded"}
    assert len(claimed) == 40, "each job claimed exactly once"
    assert cloud.platform.counters.submits == 40
    assert all(count == 1 for count in cloud.storage.writes.values())


async def test_a_postgres_restart_mid_run_is_survived(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory, postgres: PostgresCluster
) -> None:
    cloud.add_workers(count=4, seconds="0.3")
    async with dispatcher() as service:
        first = await insert_batch(database_url, [f"before {n}" for n in range(4)])
        await asyncio.to_thread(postgres.restart)
        await wait_for_batch(database_url, first, timeout_s=60)
        await asyncio.wait_for(service.wakeups["postgres"].wait(), 30)
        second = await insert_batch(database_url, [f"after {n}" for n in range(4)])
        complete = await wait_for_batch(database_url, second, timeout_s=60)
    assert complete["failed"] == 0
    assert {job["status"] for job in await jobs_of(database_url, first)} == {"succeeded"}
