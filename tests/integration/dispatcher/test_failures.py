"""Faults on the way to RunPod and back: every job ends right, and the row says why."""

from __future__ import annotations

import httpx
import psycopg

from devstack.postgres import free_port
from devstack.runpod_platform import Faults, JobStatus
from devstack.servers import LoopbackServer
from dispatcher.webhook import webhook_url
from kernel.db import act_as_user
from tests.integration.dispatcher.conftest import (
    ENDPOINTS,
    Cloud,
    DispatcherFactory,
    events_of,
    insert_batch,
    jobs_of,
    wait_for_batch,
    wait_until,
)


async def test_429s_5xxs_and_dropped_connections_cost_nothing_but_time(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.platform.faults.update({"rate_429": 0.2, "retry_after_s": 0.05, "rate_5xx": 0.1, "rate_drop": 0.1})
    cloud.add_workers(count=6, seconds="0.05")
    async with dispatcher():
        batch_id = await insert_batch(database_url, [f"scene {n}" for n in range(20)])
        complete = await wait_for_batch(database_url, batch_id, timeout_s=60)
    jobs = await jobs_of(database_url, batch_id)
    assert complete["failed"] == 0
    assert [job["status"] for job in jobs] == ["succeeded"] * 20
    errors = {(route, status) for route, status in cloud.platform.counters.requests if status >= 429}
    assert any(status == 429 for _, status in errors)
    assert any(status >= 500 for _, status in errors)
    # A dropped /run answer is a submission we lost track of: it is resubmitted, counted and explained.
    resubmitted = [
        payload for kind, payload in await events_of(database_url, batch_id) if kind == "resubmitted"
    ]
    assert sum(job["resubmissions"] for job in jobs) == len(resubmitted)
    assert all(event["reason"] == "a submission's answer was lost" for event in resubmitted)
    assert cloud.platform.counters.submits == 20 + len(resubmitted)
    assert all(count == 1 for count in cloud.storage.writes.values()), "one stored result per job"


async def test_a_permanent_failure_fails_at_once_with_the_workers_message(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.platform.faults.update({"rate_fail_permanent": 1.0})
    cloud.add_workers(count=2)
    async with dispatcher():
        batch_id = await insert_batch(database_url, ["a doomed scene"])
        complete = await wait_for_batch(database_url, batch_id)
    (job,) = await jobs_of(database_url, batch_id)
    assert (job["status"], job["attempts"], job["error"]) == ("failed", 1, "injected permanent failure")
    assert complete == {"success": False, "total": 1, "failed": 1, "images": []}
    failed = [payload for kind, payload in await events_of(database_url, batch_id) if kind == "failed"]
    assert failed == [
        {"job_id": str(job["id"]), "position": 0, "error": "injected permanent failure", "attempts": 1}
    ]


async def test_a_retryable_failure_is_retried_then_fails_after_max_attempts(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.platform.faults.update({"rate_fail_retryable": 1.0})
    cloud.add_workers(count=2)
    # A FAILED run's upload is removed (it was the worker's), so nothing stands in for it.
    async with dispatcher():
        batch_id = await insert_batch(database_url, ["an unlucky scene"])
        await wait_for_batch(database_url, batch_id)
    (job,) = await jobs_of(database_url, batch_id)
    assert (job["status"], job["attempts"], job["error"]) == ("failed", 3, "injected retryable failure")
    events = await events_of(database_url, batch_id)
    kinds = [kind for kind, _ in events]
    assert kinds.count("submitted") == 3
    # A worker's failure is that run's, not a sign of load: retried at once, on another worker.
    assert [payload["retry_in_s"] for kind, payload in events if kind == "retrying"] == [0, 0]


async def test_a_worker_that_dies_mid_job_costs_a_retry(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.platform.faults.update({"rate_worker_death": 1.0})
    cloud.add_workers(count=2)
    async with dispatcher(execution_timeout_seconds=0.5):
        batch_id = await insert_batch(database_url, ["the Library of Alexandria"])

        async def first_attempt_timed_out() -> bool:
            return any(kind == "retrying" for kind, _ in await events_of(database_url, batch_id))

        await wait_until(first_attempt_timed_out, timeout_s=20)
        cloud.platform.faults.update({"rate_worker_death": 0.0})
        await wait_for_batch(database_url, batch_id)
    (job,) = await jobs_of(database_url, batch_id)
    assert (job["status"], job["attempts"]) == ("succeeded", 2)
    retry = next(payload for kind, payload in await events_of(database_url, batch_id) if kind == "retrying")
    assert retry["error"] == "RunPod ended the job TIMED_OUT"


async def test_a_user_cancellation_cancels_the_runpod_job(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=1, seconds="5")
    async with dispatcher(lease_seconds=1.5):
        batch_id = await insert_batch(database_url, ["a very slow fresco"])

        async def submitted() -> bool:
            return (await jobs_of(database_url, batch_id))[0]["runpod_job_id"] is not None

        await wait_until(submitted)
        (job,) = await jobs_of(database_url, batch_id)
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await act_as_user(conn, str(job["user_id"]))
            assert (await (await conn.execute("select cancel_image_job(%s)", (job["id"],))).fetchone()) == (
                True,
            )

        async def cancelled_on_runpod() -> bool:
            return cloud.platform.jobs[job["runpod_job_id"]].status is JobStatus.CANCELLED

        await wait_until(cancelled_on_runpod)
    (after,) = await jobs_of(database_url, batch_id)
    assert after["status"] == "cancelled"
    assert cloud.storage.writes == {}


async def test_a_failing_endpoint_is_skipped_for_the_next(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.platform.endpoint_faults[ENDPOINTS[0]] = Faults(rate_5xx=1.0)
    cloud.add_workers(count=3, endpoint=ENDPOINTS[1])
    async with dispatcher(runpod_endpoint_id=",".join(ENDPOINTS)):
        batch_id = await insert_batch(database_url, [f"failover {n}" for n in range(6)])
        complete = await wait_for_batch(database_url, batch_id, timeout_s=60)
    assert complete["failed"] == 0
    jobs = await jobs_of(database_url, batch_id)
    assert {job["runpod_endpoint_id"] for job in jobs} == {ENDPOINTS[1]}


async def test_webhook_mode_costs_no_status_calls_and_refuses_forgeries(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=3, seconds="0.2")
    secret, port = "test-webhook-secret", free_port()
    async with dispatcher(webhook_public_url=f"http://127.0.0.1:{port}", webhook_secret=secret) as service:
        server = LoopbackServer(service.app(), "dispatcher", port=port)
        await server.start()
        batch_id = await insert_batch(database_url, ["a", "b", "c"])
        await wait_for_batch(database_url, batch_id)
        jobs = await jobs_of(database_url, batch_id)
        async with httpx.AsyncClient() as http:
            forged = await http.post(
                f"http://127.0.0.1:{port}/runpod/webhook/{jobs[0]['id']}/1?token=guess",
                json={"id": "x", "status": "FAILED", "error": "forged"},
            )
            replayed = await http.post(
                webhook_url(f"http://127.0.0.1:{port}", secret, jobs[0]["id"], 1),
                json={"id": jobs[0]["runpod_job_id"], "status": "FAILED", "error": "late"},
            )
        await server.stop()
    assert (forged.status_code, replayed.status_code) == (401, 200)
    after = await jobs_of(database_url, batch_id)
    assert [job["status"] for job in after] == ["succeeded"] * 3, "a forged or replayed call changes nothing"
    assert sum(cloud.platform.counters.status_polls.values()) == 0
    assert [job["status_polls"] for job in after] == [0, 0, 0]
