"""The job store against a real Postgres: submissions recorded together, each only if still ours."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

import psycopg
import pytest

from dispatcher.domain import ClaimedJob, JobStatus, StoreUnavailable, Success
from dispatcher.store import Coalescer, PostgresJobStore
from kernel.db import connection_pool
from tests.integration.dispatcher.conftest import events_of, insert_batch, jobs_of


@dataclass
class ThreeClaimed:
    batch_id: UUID
    store: PostgresJobStore
    jobs: list[ClaimedJob]  # in position order


@pytest.fixture
async def claimed(database_url: str) -> AsyncIterator[ThreeClaimed]:
    """A batch of three jobs, all claimed by dispatcher-1 through the store."""
    batch_id = await insert_batch(database_url, ["a", "b", "c"])
    async with connection_pool(database_url) as pool:
        store = PostgresJobStore(pool, "dispatcher-1", lease_s=30)
        jobs = sorted(await store.claim(3, per_user=3), key=lambda job: job.position)
        yield ThreeClaimed(batch_id, store, jobs)


async def test_calls_made_in_one_turn_run_once_and_later_calls_run_again() -> None:
    runs: list[list[int]] = []

    async def run(items: list[int]) -> int:
        runs.append(items)
        await asyncio.sleep(0.01)
        return sum(items)

    coalescer = Coalescer(run)
    first = await asyncio.gather(*(coalescer.add(n) for n in (1, 2, 3)))
    second = await coalescer.add(10)
    assert (first, second) == ([6, 6, 6], 10)
    assert runs == [[1, 2, 3], [10]]


async def test_a_failed_run_fails_every_caller_and_a_cancelled_caller_leaves_the_others() -> None:
    release = asyncio.Event()

    async def run(items: list[str]) -> list[str]:
        await release.wait()
        if "bad" in items:
            raise ValueError("refused")
        return items

    coalescer = Coalescer(run)
    callers = [asyncio.create_task(coalescer.add(item)) for item in ("a", "b")]
    await asyncio.sleep(0)
    callers[0].cancel()
    release.set()
    assert await callers[1] == ["a", "b"]
    with pytest.raises(ValueError, match="refused"):
        await asyncio.gather(coalescer.add("bad"), coalescer.add("good"))


async def test_submissions_recorded_together_each_only_where_the_row_is_still_ours(
    database_url: str, claimed: ThreeClaimed
) -> None:
    store, jobs = claimed.store, claimed.jobs
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        # job c was taken over by another dispatcher after its lease ran out
        await conn.execute("update image_jobs set lease_owner = 'dispatcher-2' where id = %s", (jobs[2].id,))
    recorded = await asyncio.gather(
        *(store.mark_submitted(job.id, f"rp-{job.position}", "endpoint-1") for job in jobs)
    )
    assert recorded == [True, True, False]
    jobs_now = await jobs_of(database_url, claimed.batch_id)
    assert [(job["runpod_job_id"], job["runpod_endpoint_id"]) for job in jobs_now] == [
        ("rp-0", "endpoint-1"),
        ("rp-1", "endpoint-1"),
        (None, None),
    ]
    events = await events_of(database_url, claimed.batch_id)
    submitted = [payload for kind, payload in events if kind == "submitted"]
    assert sorted(payload["runpod_job_id"] for payload in submitted) == ["rp-0", "rp-1"]


async def test_a_bad_success_fails_alone_and_the_others_of_its_moment_are_stored(
    database_url: str, claimed: ThreeClaimed
) -> None:
    # a worker's timings with a NUL character: jsonb refuses it, so the whole statement fails
    outcomes = await asyncio.gather(
        *(
            claimed.store.succeed(
                Success(
                    job.id,
                    image_url=f"https://example.test/{job.position}.png",
                    image_sha256="0" * 64,
                    width=job.width,
                    height=job.height,
                    steps=job.steps,
                    seed=7,
                    timings={"note": "\x00" if job.position == 1 else "fine"},
                    status_polls=1,
                )
            )
            for job in claimed.jobs
        ),
        return_exceptions=True,
    )
    assert outcomes[0] is True
    assert isinstance(outcomes[1], StoreUnavailable)
    assert isinstance(outcomes[1].__cause__, psycopg.Error)
    assert outcomes[2] is True
    jobs_now = await jobs_of(database_url, claimed.batch_id)
    assert [job["status"] for job in jobs_now] == ["succeeded", "submitted", "succeeded"]
    images = [
        payload["position"]
        for kind, payload in await events_of(database_url, claimed.batch_id)
        if kind == "image"
    ]
    assert sorted(images) == [0, 2]


async def test_each_users_jobs_are_claimed_in_prompt_order_and_a_retry_goes_first(database_url: str) -> None:
    # Rows of one batch share a created_at, and an updated row moves in the heap: without an
    # explicit order they come out in whatever order the table happens to hold them.
    batch_id = await insert_batch(database_url, [f"scene {n}" for n in range(8)])
    async with connection_pool(database_url) as pool:
        store = PostgresJobStore(pool, "dispatcher-1", lease_s=30)

        async def claim_one() -> ClaimedJob:
            (job,) = await store.claim(1, per_user=8)
            return job

        first, second = await claim_one(), await claim_one()
        outcome = await store.fail(
            second, "a worker's failure", retryable=True, status_polls=1, backoff_base_s=0, backoff_max_s=0
        )
        order = [(await claim_one()).position for _ in range(7)]
    assert (first.position, second.position, outcome) == (0, 1, JobStatus.QUEUED)
    assert order == [1, 2, 3, 4, 5, 6, 7]
    retried = next(job for job in await jobs_of(database_url, batch_id) if job["position"] == 1)
    assert retried["attempts"] == 2
