"""Queue-aware completion and GPU-aware admission: what the dispatcher keeps at RunPod, in
what order users get workers, that every row passes through `running`, and that
`status_polls` counts every request. Structural properties, not timings."""

from __future__ import annotations

import asyncio
from uuid import UUID

import psycopg

from devstack.postgres import free_port
from devstack.servers import LoopbackServer
from tests.integration.dispatcher.conftest import (
    ENDPOINTS,
    USER_A,
    USER_B,
    Cloud,
    DispatcherFactory,
    events_of,
    insert_batch,
    jobs_of,
    wait_for_batch,
    wait_until,
)


async def test_only_the_workers_and_a_small_queue_are_submitted_the_rest_waits_in_postgres(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=2, seconds="0.2")
    async with dispatcher(admission_queue_depth=1, capacity_poll_seconds=0.2):
        batch = await insert_batch(database_url, [f"admitted {n}" for n in range(12)])
        seen_at_runpod = await _at_runpod_until_done(database_url, cloud, batch)
    # Two running and one waiting, never more: a job is submitted only once another is seen
    # finished. (inQueue alone can read 2 for the moment between a submit and a free worker's
    # next take.) With everything submitted at once it would have been 12.
    assert max(seen_at_runpod) <= 2 + 1
    assert max(seen_at_runpod) >= 2
    assert cloud.platform.counters.submits == 12


async def test_the_default_queue_depth_grows_with_the_refill_time_it_learns(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    # Every RunPod call takes 0.3 s: a finish is noticed late and a submission comes back late,
    # so a freed worker would idle unless more jobs wait at RunPod than the one of a calm API.
    cloud.add_workers(count=3, seconds="0.5")
    cloud.platform.faults.update({"latency_s": 0.3})
    async with dispatcher(capacity_poll_seconds=0.2) as service:
        batch = await insert_batch(database_url, [f"slow API {n}" for n in range(12)])
        assert (await wait_for_batch(database_url, batch, timeout_s=60))["failed"] == 0
        model = service.dispatcher.model
        assert model.submit_s > 0.15, "learnt from the submissions' round trips"
        assert model.detection_s > 0.15, "learnt from how late finishes were noticed"
        assert service.dispatcher._admitted() >= 3 + 2


async def test_a_newcomer_waits_behind_the_queue_depth_not_behind_the_other_users_backlog(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    # A worker frees every 0.33 s: far more than B's claim and submission take, so what B waits
    # behind is counted in jobs, not in how busy the machine was (at 0.3 s per job, a start
    # every 0.1 s, a slow claim alone let one more of A's start first).
    cloud.add_workers(count=3, seconds="1.0")
    async with dispatcher(admission_queue_depth=1, capacity_poll_seconds=0.2, max_in_flight_per_user=64):
        backlog = await insert_batch(database_url, [f"A's scene {n}" for n in range(15)], user_id=USER_A)
        await asyncio.sleep(0.5)
        newcomer = await insert_batch(database_url, ["B's one scene"], user_id=USER_B)
        await wait_for_batch(database_url, newcomer)
        await wait_for_batch(database_url, backlog)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        (b_inserted, b_started) = await (
            await conn.execute(
                "select created_at, started_at from image_jobs where batch_id = %s", (newcomer,)
            )
        ).fetchone() or (None, None)
        ahead = await (
            await conn.execute(
                "select count(*) from image_jobs where batch_id = %s and started_at > %s and started_at < %s",
                (backlog, b_inserted, b_started),
            )
        ).fetchone()
    assert ahead is not None
    # B has nothing in flight, so its job is submitted at once, over the full admission: it
    # starts after at most the one job waiting at RunPod (and one submitted as B's was inserted),
    # not after one of A's running three has finished and been noticed.
    assert ahead[0] <= 1 + 1, ahead[0]


async def test_with_a_webhook_every_job_passes_through_running_with_the_workers_start(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=2, seconds="0.05")
    secret, port = "test-webhook-secret", free_port()
    async with dispatcher(webhook_public_url=f"http://127.0.0.1:{port}", webhook_secret=secret) as service:
        server = await LoopbackServer(service.app(), "dispatcher", port=port).start()
        batch = await insert_batch(database_url, [f"hooked {n}" for n in range(6)])
        assert (await wait_for_batch(database_url, batch))["failed"] == 0
        await server.stop()
        # the webhooks taught the latency model (its safety-net poll follows the real times)
        learnt = service.dispatcher.model.expected(("basic", 1024, 576))
        assert learnt.samples == 6
        assert 0.04 <= learnt.execution_s < 1.0
    running = [payload for kind, payload in await events_of(database_url, batch) if kind == "running"]
    assert len(running) == 6
    for job in await jobs_of(database_url, batch):
        assert job["submitted_at"] <= job["started_at"] <= job["finished_at"]
    assert sum(cloud.platform.counters.status_polls.values()) == 0, "the webhook said it all"


async def test_status_polls_counts_every_request_sent_retries_included(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=2, seconds="0.1")
    cloud.platform.faults.update({"rate_5xx": 0.3})
    async with dispatcher():
        batch = await insert_batch(database_url, [f"counted {n}" for n in range(8)])
        assert (await wait_for_batch(database_url, batch, timeout_s=60))["failed"] == 0
    jobs = await jobs_of(database_url, batch)
    received = cloud.platform.counters.status_polls
    assert [job["status_polls"] for job in jobs] == [received[job["runpod_job_id"]] for job in jobs]
    assert sum(job["status_polls"] for job in jobs) > 0


async def test_a_running_jobs_step_progress_is_recorded_from_its_status_polls(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=1, seconds="2")
    seen: list[dict[str, int]] = []
    # polled often, so that some polls find it running (the adaptive schedule would look twice)
    async with dispatcher(fixed_poll_interval_seconds=0.3):
        batch = await insert_batch(database_url, ["a long, slow scene"])
        waiting = asyncio.create_task(wait_for_batch(database_url, batch))
        while not waiting.done():
            (job,) = await jobs_of(database_url, batch)
            if job["status"] == "running" and job["progress"] is not None:
                seen.append(job["progress"])
            await asyncio.sleep(0.05)
        assert (await waiting)["failed"] == 0
    assert seen, "a poll while it ran recorded the worker's step"
    assert all(p["steps"] == 9 and 1 <= p["step"] <= 9 and p["elapsed_ms"] > 0 for p in seen)


async def test_a_user_with_nothing_in_flight_is_submitted_at_once_even_when_admission_is_full(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=2, seconds="30")  # nothing of A's finishes during the test
    async with dispatcher(admission_queue_depth=1, capacity_poll_seconds=0.2, max_in_flight_per_user=64):
        await insert_batch(database_url, [f"A's scene {n}" for n in range(10)], user_id=USER_A)
        await wait_until(lambda: _submitted(database_url, USER_A, 3))  # two running, one waiting: full
        await insert_batch(database_url, ["B's one scene"], user_id=USER_B)
        await wait_until(lambda: _submitted(database_url, USER_B, 1), timeout_s=3)
        await asyncio.sleep(0.5)
        assert await _submitted(database_url, USER_A, 3, exactly=True), "A got no slot of B's"


async def _submitted(database_url: str, user: str, n: int, exactly: bool = False) -> bool:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        row = await (
            await conn.execute(
                "select count(*) from image_jobs where user_id = %s and runpod_job_id is not null", (user,)
            )
        ).fetchone()
    count = row[0] if row else 0
    return bool(count == n if exactly else count >= n)


async def test_replicas_share_the_endpoints_capacity_rather_than_each_filling_it(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=2, seconds="0.3")
    settings = {"admission_queue_depth": 1, "capacity_poll_seconds": 0.2, "max_in_flight_per_user": 64}
    async with dispatcher(dispatcher_id="one", **settings):
        batch = await insert_batch(database_url, [f"shared {n}" for n in range(24)])
        await wait_until(lambda: _published_in_flight(database_url, "one", 3))
        async with dispatcher(dispatcher_id="two", **settings):
            seen_at_runpod = await _at_runpod_until_done(database_url, cloud, batch)
    # The second replica sees the first hold the two workers and the one waiting place, and
    # adds none of its own: without sharing, it would have submitted three more.
    assert max(seen_at_runpod) <= 2 + 1
    assert cloud.platform.counters.submits == 24


async def _published_in_flight(database_url: str, dispatcher_id: str, n: int) -> bool:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        row = await (
            await conn.execute(
                "select in_flight from image_dispatchers where dispatcher_id = %s", (dispatcher_id,)
            )
        ).fetchone()
    return row is not None and row[0] >= n


async def _at_runpod_until_done(database_url: str, cloud: Cloud, batch: UUID) -> list[int]:
    """RunPod's jobs queued or in progress, sampled every 20 ms until ``batch`` completes
    (with nothing failed)."""
    seen: list[int] = []
    waiting = asyncio.create_task(wait_for_batch(database_url, batch))
    while not waiting.done():
        jobs = cloud.platform.health(ENDPOINTS[0])["jobs"]
        seen.append(jobs["inQueue"] + jobs["inProgress"])
        await asyncio.sleep(0.02)
    assert (await waiting)["failed"] == 0
    return seen
