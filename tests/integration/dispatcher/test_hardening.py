"""The dispatcher tried as an attacker and a misconfigured deployment would: whose bytes a job
ends with, by every way they are chosen (fresh run, reuse, retry, requeue, projects); webhooks
that are forged, replayed, of an older submission, of another RunPod job, huge or carrying a bad
image; a RunPod key that stops working; RunPod answers that are not what they seem; anon-key
batches and the per-user cap."""

from __future__ import annotations

import asyncio
import base64
import functools
from typing import Any
from uuid import UUID

import httpx
import psycopg
from prometheus_client import REGISTRY

from devstack.png import solid_png
from devstack.postgres import free_port
from devstack.runpod_platform import JobStatus
from devstack.servers import LoopbackServer
from devstack.synthetic import _colour
from dispatcher.webhook import webhook_url
from tests.integration.dispatcher.conftest import (
    API_KEY,
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

TIMED = '[{"index": 1, "startTime": 0, "endTime": 1}]'


def stored(cloud: Cloud, path: str) -> bytes:
    return (cloud.storage.root / "generated-assets" / path).read_bytes()


def rendered(prompt: str, seed: int, size: tuple[int, int] = (1024, 576)) -> bytes:
    """What the synthetic workers make of this prompt and seed."""
    return solid_png(*size, _colour(prompt, seed))


# ---- whose bytes a job ends with -----------------------------------------------------------------
async def test_reuse_never_copies_bytes_that_are_no_longer_the_earlier_jobs(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    assert rendered("a red car", 42) != rendered("a blue boat", 7, (1024, 1024))
    cloud.add_workers(count=2)
    async with dispatcher():
        first = await insert_batch(database_url, ["a red car"], seed=42, project_id="rome", timings=TIMED)
        await wait_for_batch(database_url, first)
        # the owner writes the project's scene 1 again, with another image
        later = await insert_batch(
            database_url, ["a blue boat"], seed=7, aspect_ratio="1:1", project_id="rome", timings=TIMED
        )
        await wait_for_batch(database_url, later)
        submits = cloud.platform.counters.submits
        other = await insert_batch(database_url, ["a red car"], USER_B, seed=42)
        await wait_for_batch(database_url, other)
        assert cloud.platform.counters.submits == submits + 1, "the changed bytes were not reused: a GPU run"
        third = await insert_batch(database_url, ["a red car"], USER_B, seed=42)
        await wait_for_batch(database_url, third)
        assert cloud.platform.counters.submits == submits + 1, "B's own, unchanged image is reused"
    (a,), (b,), (b2,) = [await jobs_of(database_url, batch) for batch in (first, other, third)]
    assert a["storage_path"] == "rome/images/image_001_0_to_1.png"
    assert stored(cloud, a["storage_path"]) == rendered("a blue boat", 7, (1024, 1024))
    assert stored(cloud, b["storage_path"]) == rendered("a red car", 42)
    assert b["reused_from"] is None
    assert (b2["reused_from"], b2["image_sha256"]) == (b["id"], b["image_sha256"])
    assert stored(cloud, b2["storage_path"]) == rendered("a red car", 42)


async def test_every_job_keeps_its_own_key_through_retries_and_requeues(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.platform.faults.update({"rate_fail_permanent": 1.0})
    cloud.add_workers(count=2)
    async with dispatcher():
        a = await insert_batch(database_url, ["scene"], USER_A, project_id="athens", timings=TIMED)
        b = await insert_batch(database_url, ["scene"], USER_B, timings=TIMED)
        for batch in (a, b):
            await wait_for_batch(database_url, batch)
        keys_before = [(await jobs_of(database_url, batch))[0]["storage_path"] for batch in (a, b)]
        cloud.platform.faults.update({"rate_fail_permanent": 0.0})
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute("select requeue_failed_jobs(failed_since => now() - interval '1 hour')")
        for batch in (a, b):
            await wait_until(functools.partial(_succeeded, database_url, batch), timeout_s=20)
    (job_a,), (job_b,) = [await jobs_of(database_url, batch) for batch in (a, b)]
    assert [job_a["storage_path"], job_b["storage_path"]] == keys_before
    assert job_a["storage_path"] == "athens/images/image_001_0_to_1.png"
    assert job_b["storage_path"] == f"timed-images/{job_b['id']}/images/image_001_0_to_1.png"
    assert stored(cloud, job_a["storage_path"]) == rendered("scene", job_a["seed"])


async def _succeeded(database_url: str, batch_id: UUID) -> bool:
    return all(job["status"] == "succeeded" for job in await jobs_of(database_url, batch_id))


# ---- webhooks ------------------------------------------------------------------------------------
async def test_webhooks_that_are_not_the_current_submissions_own_change_nothing(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    secret, port = "test-webhook-secret", free_port()
    base = f"http://127.0.0.1:{port}"
    evil = {"image_base64": base64.b64encode(solid_png(1024, 576, (255, 0, 0))).decode()}
    async with dispatcher(webhook_public_url=base, webhook_secret=secret) as service:
        server = await LoopbackServer(service.app(), "dispatcher", port=port).start()
        target, other = (
            await insert_batch(database_url, ["target"], seed=3),
            await insert_batch(database_url, ["x"]),
        )
        await wait_until(lambda: _submitted(database_url, target))
        (job,), (other_job,) = await jobs_of(database_url, target), await jobs_of(database_url, other)
        current = webhook_url(base, secret, job["id"], job["submissions"])
        async with httpx.AsyncClient(timeout=30) as http:
            answers = {
                "forged": await http.post(f"{base}/runpod/webhook/{job['id']}/1?token=guess", json={}),
                "other job's token": await http.post(
                    webhook_url(base, secret, other_job["id"], 1).replace(
                        str(other_job["id"]), str(job["id"])
                    ),
                    json={"id": job["runpod_job_id"], "status": "COMPLETED", "output": evil},
                ),
                "older submission": await http.post(
                    webhook_url(base, secret, job["id"], job["submissions"] - 1),
                    json={"id": job["runpod_job_id"], "status": "COMPLETED", "output": evil},
                ),
                "another RunPod job": await http.post(
                    current, json={"id": "rp-someone-else", "status": "COMPLETED", "output": evil}
                ),
                "not a JSON object": await http.post(current, content=b"[1, 2]"),
                "not JSON": await http.post(current, content=b"\xff{"),
                "huge": await http.post(current, content=b" " * (33 * 1024 * 1024)),
            }
        codes = {name: response.status_code for name, response in answers.items()}
        assert codes == {
            "forged": 401,
            "other job's token": 401,
            "older submission": 409,
            "another RunPod job": 409,
            "not a JSON object": 400,
            "not JSON": 400,
            "huge": 413,
        }
        cloud.add_workers(count=2)  # now the real run happens, and its own webhook arrives
        await wait_for_batch(database_url, target)
        await server.stop()
    (job,) = await jobs_of(database_url, target)
    assert job["status"] == "succeeded"
    assert stored(cloud, job["storage_path"]) == rendered("target", 3)
    for reason in ("not the current submission", "another RunPod job than the one recorded"):
        assert refused(reason) >= 1, reason


def refused(reason: str) -> float:
    """How many webhooks this process refused for ``reason`` (the dispatcher's metric)."""
    return REGISTRY.get_sample_value("zimage_runpod_webhooks_refused_total", {"reason": reason}) or 0.0


async def test_a_webhook_with_a_bad_image_is_a_retried_failure_and_the_real_result_wins(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    secret, port = "test-webhook-secret", free_port()
    base = f"http://127.0.0.1:{port}"
    bad_images = [
        b"\x89PNG\r\n\x1a\n" + solid_png(1024, 576)[8:33],  # 33 bytes: a header, no image data
        solid_png(1024, 576) + b"<html></html>",
    ]
    async with dispatcher(webhook_public_url=base, webhook_secret=secret) as service:
        server = await LoopbackServer(service.app(), "dispatcher", port=port).start()
        batch = await insert_batch(database_url, ["bad image"], seed=5)
        async with httpx.AsyncClient(timeout=30) as http:
            for image in bad_images:
                await wait_until(lambda: _submitted(database_url, batch))
                (job,) = await jobs_of(database_url, batch)
                output = {"image_base64": base64.b64encode(image).decode()}
                response = await http.post(
                    webhook_url(base, secret, job["id"], job["submissions"]),
                    json={"id": job["runpod_job_id"], "status": "COMPLETED", "output": output},
                )
                assert response.status_code == 200
                await wait_until(
                    functools.partial(_submission_after, database_url, batch, job["submissions"])
                )
        cloud.add_workers(count=1)
        await wait_for_batch(database_url, batch)
        await server.stop()
    (job,) = await jobs_of(database_url, batch)
    retried = [
        payload["error"] for kind, payload in await events_of(database_url, batch) if kind == "retrying"
    ]
    assert retried == [
        "the worker's image is not a valid PNG: truncated before IEND",
        "the worker's image is not a valid PNG: 13 bytes after IEND",
    ]
    assert (job["status"], job["attempts"]) == ("succeeded", 3)
    assert stored(cloud, job["storage_path"]) == rendered("bad image", 5)
    assert cloud.storage.writes == {("generated-assets", job["storage_path"]): 1}, "no bad image stored"


async def _submitted(database_url: str, batch_id: UUID) -> bool:
    jobs = await jobs_of(database_url, batch_id)
    return all(job["runpod_job_id"] is not None and job["status"] == "submitted" for job in jobs)


async def _submission_after(database_url: str, batch_id: UUID, submission: int) -> bool:
    (job,) = await jobs_of(database_url, batch_id)
    return job["submissions"] > submission or job["status"] in ("failed", "succeeded")


# ---- RunPod misconfigured, or answering oddly ----------------------------------------------------
async def test_a_refused_api_key_pauses_the_endpoint_keeps_the_jobs_queued_and_resumes(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=2)
    cloud.platform.api_key = "rotated-elsewhere"  # our key no longer works
    port = free_port()
    async with dispatcher(endpoint_probe_seconds=0.2) as service:
        server = await LoopbackServer(service.app(), "dispatcher", port=port).start()
        batch = await insert_batch(database_url, [f"paused {n}" for n in range(3)])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            await wait_until(lambda: _healthz_is(http, 503))
            health = (await http.get("/healthz")).json()
            assert health["runpod_endpoints_refusing_key"] == ["ep-primary"]
            await asyncio.sleep(1)  # several probes: the jobs wait, unpenalised
            jobs = await jobs_of(database_url, batch)
            assert [(job["status"], job["attempts"], job["error"]) for job in jobs] == [
                ("queued", 0, None)
            ] * 3
            metrics = (await http.get("/metrics")).text
            assert 'zimage_runpod_endpoint_paused{endpoint_id="ep-primary"} 1.0' in metrics
            cloud.platform.api_key = API_KEY  # the key is fixed
            await wait_for_batch(database_url, batch)
            assert (await http.get("/healthz")).status_code == 200
        await server.stop()
    jobs = await jobs_of(database_url, batch)
    assert [(job["status"], job["attempts"]) for job in jobs] == [("succeeded", 1)] * 3


async def _healthz_is(http: httpx.AsyncClient, status: int) -> bool:
    return (await http.get("/healthz")).status_code == status


async def test_a_refused_status_request_cancels_the_runpod_job_before_giving_up(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=1, seconds="5")
    cloud.platform.faults.update({"rate_status_400": 1.0})
    async with dispatcher():
        batch = await insert_batch(database_url, ["refused"])
        complete = await wait_for_batch(database_url, batch)
    (job,) = await jobs_of(database_url, batch)
    assert complete["failed"] == 1
    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert job["error"].startswith("RunPod status: 400")
    assert cloud.platform.jobs[job["runpod_job_id"]].status is JobStatus.CANCELLED, (
        "not left running, billing"
    )


async def test_an_unknown_job_answered_200_failed_is_resubmitted_silently(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.platform.faults.update({"unknown_job_as_failed": True})
    async with dispatcher():
        batch = await insert_batch(database_url, ["forgotten"])
        await wait_until(lambda: _submitted(database_url, batch))
        assert cloud.platform.purge_queue("ep-primary") == 1  # RunPod forgets it
        await wait_until(lambda: _resubmitted(database_url, batch))
        cloud.add_workers(count=1)
        await wait_for_batch(database_url, batch)
    (job,) = await jobs_of(database_url, batch)
    kinds = [kind for kind, _ in await events_of(database_url, batch)]
    assert (job["status"], job["resubmissions"], job["error"]) == ("succeeded", 1, None)
    assert "retrying" not in kinds, "users never saw it as a failure"


async def _resubmitted(database_url: str, batch_id: UUID) -> bool:
    (job,) = await jobs_of(database_url, batch_id)
    return bool(job["resubmissions"])


# ---- the per-user cap ----------------------------------------------------------------------------
async def test_anon_key_batches_share_one_per_user_cap(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=8, seconds="0.3")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for n in range(3):  # as the app inserts them for anon-key callers: no user
            prompts = [f"anon {n}.{i}" for i in range(10)]
            await conn.execute("insert into image_batches (prompts) values (%s)", (prompts,))
        peak = 0
        async with dispatcher(max_in_flight=8, max_in_flight_per_user=2):
            user_batch = await insert_batch(database_url, ["a signed-in user's one image"])
            while not await _succeeded(database_url, user_batch):
                peak = max(peak, await anon_jobs(conn, "status in ('submitted', 'running')"))
                await asyncio.sleep(0.02)
            anon_waiting = await anon_jobs(conn, "status = 'queued'")
    assert peak <= 2
    assert anon_waiting > 10, "the user's one image did not wait behind the anon batches"


async def anon_jobs(conn: psycopg.AsyncConnection[Any], condition: str) -> int:
    row = await (
        await conn.execute(f"select count(*) from image_jobs where user_id is null and {condition}")
    ).fetchone()
    assert row is not None
    return int(row[0])


async def test_with_a_second_endpoint_the_one_refusing_the_key_is_skipped_and_nothing_waits(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.platform.endpoint_api_keys[ENDPOINTS[0]] = "rotated-on-the-primary-only"
    cloud.add_workers(count=2, endpoint=ENDPOINTS[1])
    port = free_port()
    async with dispatcher(runpod_endpoint_id=",".join(ENDPOINTS), endpoint_probe_seconds=0.2) as service:
        server = await LoopbackServer(service.app(), "dispatcher", port=port).start()
        batch = await insert_batch(database_url, [f"failover {n}" for n in range(4)])
        await wait_for_batch(database_url, batch)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            health = await http.get("/healthz")
        await server.stop()
    jobs = await jobs_of(database_url, batch)
    assert [(job["status"], job["attempts"]) for job in jobs] == [("succeeded", 1)] * 4
    assert {job["runpod_endpoint_id"] for job in jobs} == {ENDPOINTS[1]}
    assert health.status_code == 200, "one endpoint still takes the key: the service is up"
    assert health.json()["runpod_endpoints_refusing_key"] == [ENDPOINTS[0]]
