"""Every fault knob and lifecycle rule of the RunPod stand-in does what it says."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from devstack.runpod_platform import RateLimiter
from devstack.servers import LoopbackServer
from tests.integration.devstack.conftest import API_KEY, WORKER_KEY, RunPodStandIn

SMALL = {"prompt": "a map of Rome", "width": 256, "height": 256}


async def wait_for_status(
    client: httpx.AsyncClient, job_id: str, wanted: set[str], timeout_s: float = 10
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = (await client.get(f"/status/{job_id}")).json()
        if answer.get("status") in wanted:
            return answer
        await asyncio.sleep(0.02)
    raise AssertionError(f"{job_id} never reached {wanted}")


async def submit(client: httpx.AsyncClient, body: dict[str, Any] | None = None) -> str:
    answer = await client.post("/run", json=body or {"input": SMALL})
    assert answer.status_code == 200, answer.text
    job_id: str = answer.json()["id"]
    return job_id


class WebhookReceiver:
    """A loopback HTTP endpoint that records deliveries and answers a chosen status."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.deliveries: list[dict[str, Any]] = []
        self._arrived = asyncio.Condition()
        self.server = LoopbackServer(
            Starlette(routes=[Route("/hook", self.receive, methods=["POST"])]), "hook"
        )

    async def receive(self, request: Request) -> JSONResponse:
        self.deliveries.append(await request.json())
        async with self._arrived:
            self._arrived.notify_all()
        return JSONResponse({}, status_code=self.status)

    async def wait_for(self, count: int, timeout_s: float = 5) -> None:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.deliveries) >= count), timeout_s)

    @property
    def url(self) -> str:
        return f"{self.server.url}/hook"


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hook = WebhookReceiver()
    await hook.server.start()
    yield hook
    await hook.server.stop()


async def test_429_carries_retry_after(standin: RunPodStandIn) -> None:
    standin.platform.faults.update({"rate_429": 1.0, "retry_after_s": 2.5})
    async with standin.client() as client:
        answer = await client.post("/run", json={"input": SMALL})
    assert (answer.status_code, answer.headers["retry-after"]) == (429, "2.5")
    assert standin.platform.counters.submits == 0


async def test_5xx_answers(standin: RunPodStandIn) -> None:
    standin.platform.faults.update({"rate_5xx": 1.0})
    async with standin.client() as client:
        statuses = {(await client.get("/health")).status_code for _ in range(20)}
    assert statuses <= {500, 502, 503}
    assert len(statuses) > 1


async def test_added_latency(standin: RunPodStandIn) -> None:
    standin.platform.faults.update({"latency_s": 0.3})
    async with standin.client() as client:
        started = time.monotonic()
        assert (await client.get("/health")).status_code == 200
    assert time.monotonic() - started >= 0.3


async def test_a_dropped_connection_loses_the_answer_but_not_the_job(standin: RunPodStandIn) -> None:
    standin.platform.faults.update({"rate_drop": 1.0})
    async with standin.client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/run", json={"input": SMALL})
    assert standin.platform.counters.submits == 1
    assert [job.status.value for job in standin.platform.jobs.values()] == ["IN_QUEUE"]


@pytest.mark.parametrize(
    ("knob", "retryable"), [("rate_fail_retryable", True), ("rate_fail_permanent", False)]
)
async def test_injected_job_failures(standin: RunPodStandIn, knob: str, retryable: bool) -> None:
    standin.platform.faults.update({knob: 1.0})
    workers = standin.synthetic_workers()
    async with standin.client() as client:
        answer = await wait_for_status(client, await submit(client), {"FAILED", "COMPLETED"})
    await workers.stop()
    assert answer["status"] == "FAILED"
    assert json.loads(answer["error"])["retryable"] is retryable


async def test_a_dead_worker_leaves_its_job_to_time_out(standin: RunPodStandIn) -> None:
    standin.platform.faults.update({"rate_worker_death": 1.0})
    workers = standin.synthetic_workers()
    async with standin.client() as client:
        job_id = await submit(client, {"input": SMALL, "policy": {"executionTimeout": 300}})
        assert (await wait_for_status(client, job_id, {"IN_PROGRESS"}))["status"] == "IN_PROGRESS"
        answer = await wait_for_status(client, job_id, {"TIMED_OUT", "COMPLETED"})
    await workers.stop()
    assert answer["status"] == "TIMED_OUT"
    assert answer["executionTime"] >= 300


async def test_a_lost_job_can_run_again(standin: RunPodStandIn) -> None:
    standin.platform.faults.update({"rate_worker_death": 1.0, "rerun_lost_jobs": True})
    workers = standin.synthetic_workers()
    async with standin.client() as client:
        job_id = await submit(client, {"input": SMALL, "policy": {"executionTimeout": 200}})
        await wait_for_status(client, job_id, {"IN_PROGRESS"})
        standin.platform.faults.update({"rate_worker_death": 0.0})  # the replacement worker survives
        answer = await wait_for_status(client, job_id, {"COMPLETED", "TIMED_OUT"})
        health = (await client.get("/health")).json()
    await workers.stop()
    assert answer["status"] == "COMPLETED"
    assert health["jobs"]["retried"] == 1


async def test_queue_delay(standin: RunPodStandIn) -> None:
    standin.platform.faults.update({"queue_delay_s": 0.4})
    workers = standin.synthetic_workers(seconds="0")
    async with standin.client() as client:
        answer = await wait_for_status(client, await submit(client), {"COMPLETED"})
    await workers.stop()
    assert answer["delayTime"] >= 400


async def test_a_duplicate_run_reports_twice(standin: RunPodStandIn, receiver: WebhookReceiver) -> None:
    standin.platform.faults.update({"rate_duplicate_run": 1.0})
    workers = standin.synthetic_workers(count=2, seconds="0.1")
    async with standin.client() as client:
        job_id = await submit(client, {"input": SMALL, "webhook": receiver.url})
        await wait_for_status(client, job_id, {"COMPLETED"})
    await receiver.wait_for(2)
    await workers.stop()
    assert standin.platform.jobs[job_id].runs == 2
    assert [delivery["id"] for delivery in receiver.deliveries] == [job_id, job_id]


async def test_rate_limits_per_10_seconds(standin: RunPodStandIn) -> None:
    limiter = RateLimiter()
    assert all(limiter.allow("ep", "cancel") for _ in range(100))
    assert not limiter.allow("ep", "cancel")
    assert limiter.allow("other-ep", "cancel"), "limits are per endpoint"
    standin.platform.faults.update({"rate_limits": True})
    async with standin.client() as client:
        answers = [(await client.post("/cancel/nope")).status_code for _ in range(101)]
    assert answers[:100] == [404] * 100
    assert answers[100] == 429


async def test_results_expire_after_the_retention_time(standin: RunPodStandIn) -> None:
    standin.platform.retention_s = 0.3
    workers = standin.synthetic_workers(seconds="0")
    async with standin.client() as client:
        job_id = await submit(client)
        await wait_for_status(client, job_id, {"COMPLETED"})
        await asyncio.sleep(0.5)
        assert (await client.get(f"/status/{job_id}")).status_code == 404
    await workers.stop()


async def test_ttl_is_a_hard_limit_even_for_a_queued_job(standin: RunPodStandIn) -> None:
    async with standin.client() as client:  # no workers: the job never starts
        job_id = await submit(client, {"input": SMALL, "policy": {"ttl": 300}})
        assert (await client.get(f"/status/{job_id}")).json()["status"] == "IN_QUEUE"
        await asyncio.sleep(0.5)
        assert (await client.get(f"/status/{job_id}")).status_code == 404


async def test_webhook_payload_is_the_status_envelope_plus_input(
    standin: RunPodStandIn, receiver: WebhookReceiver
) -> None:
    workers = standin.synthetic_workers(seconds="0")
    async with standin.client() as client:
        job_id = await submit(client, {"input": SMALL, "webhook": receiver.url})
        await wait_for_status(client, job_id, {"COMPLETED"})
    await receiver.wait_for(1)
    await workers.stop()
    (delivery,) = receiver.deliveries
    assert (delivery["id"], delivery["status"], delivery["input"], delivery["webhook"]) == (
        job_id,
        "COMPLETED",
        SMALL,
        receiver.url,
    )
    assert delivery["output"]["width"] == 256
    assert {"delayTime", "executionTime"} <= set(delivery)


async def test_a_failing_webhook_is_retried_twice(standin: RunPodStandIn, receiver: WebhookReceiver) -> None:
    receiver.status = 500
    workers = standin.synthetic_workers(seconds="0")
    async with standin.client() as client:
        job_id = await submit(client, {"input": SMALL, "webhook": receiver.url})
        await wait_for_status(client, job_id, {"COMPLETED"})
    await receiver.wait_for(3)
    await asyncio.sleep(0.2)  # a fourth delivery would have arrived by now
    await workers.stop()
    assert len(receiver.deliveries) == 3
    assert standin.platform.counters.webhook_deliveries[job_id] == 3


async def test_counters_by_route_and_status_and_polls_per_job(standin: RunPodStandIn) -> None:
    async with standin.client() as client:
        job_id = await submit(client)
        for _ in range(3):
            await client.get(f"/status/{job_id}")
        await client.get("/status/missing")
        counters = (await client.get(f"{standin.server.url}/_devstack/counters")).json()
    requests = {(row["route"], row["status"]): row["count"] for row in counters["requests"]}
    assert requests == {("run", 200): 1, ("status", 200): 3, ("status", 404): 1}
    assert counters["status_polls"][job_id] == 3
    assert counters["submits"] == 1


async def test_faults_can_be_set_over_http(standin: RunPodStandIn) -> None:
    async with standin.client() as client:
        url = f"{standin.server.url}/_devstack/faults"
        assert (await client.post(url, json={"rate_429": 0.5})).json()["rate_429"] == 0.5
        refused = await client.post(url, json={"rate_meteor": 1})
        assert (refused.status_code, refused.json()["error"]) == (400, "unknown fault knob: rate_meteor")
        assert (await client.get(url, headers={"Authorization": ""})).status_code == 401
    assert standin.platform.faults.rate_429 == 0.5


async def test_job_take_long_polls_and_needs_the_worker_key(standin: RunPodStandIn) -> None:
    take = f"{standin.base_url}/ep-test/job-take/w1?gpu=local&job_in_progress=0"
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(take, headers={"Authorization": API_KEY})).status_code == 401
        started = time.monotonic()
        empty = await client.get(take, headers={"Authorization": WORKER_KEY})
        assert (empty.status_code, time.monotonic() - started >= 0.9) == (204, True)
        waiting = asyncio.create_task(client.get(take, headers={"Authorization": WORKER_KEY}))
        await asyncio.sleep(0.1)
        async with standin.client() as public:
            job_id = await submit(public)
        taken = await waiting
        assert taken.json() == {"id": job_id, "input": SMALL}
        done = f"{standin.base_url}/ep-test/job-done/w1/{job_id}?gpu=local&isStream=false"
        await client.post(
            done,
            content=json.dumps({"output": {"ok": True}}),
            headers={"Authorization": WORKER_KEY, "Content-Type": "application/x-www-form-urlencoded"},
        )
        async with standin.client() as public:
            assert (await public.get(f"/status/{job_id}")).json()["output"] == {"ok": True}


async def test_cancelling_a_running_job_signals_its_worker(standin: RunPodStandIn) -> None:
    take = f"{standin.base_url}/ep-test/job-take/w9?gpu=local"
    stop = f"{standin.base_url}/ep-test/job-stop/w9?gpu=local"
    async with httpx.AsyncClient(timeout=5, headers={"Authorization": WORKER_KEY}) as worker:
        async with standin.client() as public:
            job_id = await submit(public)
            assert (await worker.get(take)).json()["id"] == job_id
            assert (await public.post(f"/cancel/{job_id}")).json()["status"] == "CANCELLED"
        assert (await worker.get(stop)).json() == {"jobsToStop": [job_id]}


async def test_stop_pod_asks_for_the_worker_to_be_recycled(standin: RunPodStandIn) -> None:
    recycled: list[str] = []
    standin.platform.on_stop_pod = recycled.append
    take = f"{standin.base_url}/ep-test/job-take/w7?gpu=local"
    async with (
        httpx.AsyncClient(timeout=5, headers={"Authorization": WORKER_KEY}) as worker,
        standin.client() as public,
    ):
        job_id = await submit(public)
        assert (await worker.get(take)).json()["id"] == job_id
        oom = json.dumps({"error_type": "out_of_memory", "error_message": "OOM", "retryable": True})
        done = f"{standin.base_url}/ep-test/job-done/w7/{job_id}?gpu=local&isStream=false"
        await worker.post(done, content=json.dumps({"error": oom, "stopPod": True}))
        answer = (await public.get(f"/status/{job_id}")).json()
    assert (answer["status"], json.loads(answer["error"])["retryable"]) == ("FAILED", True)
    assert recycled == ["w7"]
