"""The official runpod client, unchanged, against the stand-in with synthetic workers.

The client is synchronous (requests), so it runs in a thread while the stand-in
serves from the test's event loop.
"""

from __future__ import annotations

import asyncio
import base64

import pytest
import runpod

from devstack.png import png_size
from tests.integration.devstack.conftest import ENDPOINT, RunPodStandIn


async def test_run_status_output_against_synthetic_workers(standin: RunPodStandIn) -> None:
    workers = standin.synthetic_workers()
    endpoint = runpod.Endpoint(ENDPOINT)
    job = await asyncio.to_thread(endpoint.run, {"prompt": "a Roman road", "aspectRatio": "9:16", "seed": 4})
    assert await asyncio.to_thread(job.status) in {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
    output = await asyncio.to_thread(job.output, 10)
    assert await asyncio.to_thread(job.status) == "COMPLETED"
    assert (output["width"], output["height"], output["steps"], output["seed"]) == (576, 1024, 9, 4)
    assert png_size(base64.b64decode(output["image_base64"])) == (576, 1024)
    await workers.stop()


async def test_run_sync_returns_the_output(standin: RunPodStandIn) -> None:
    workers = standin.synthetic_workers()
    endpoint = runpod.Endpoint(ENDPOINT)
    output = await asyncio.to_thread(
        endpoint.run_sync, {"input": {"prompt": "a sextant", "quality": "high"}}, 10
    )
    assert (output["width"], output["height"], output["steps"]) == (1024, 576, 16)
    await workers.stop()


async def test_cancel_a_queued_job_and_purge_the_queue(standin: RunPodStandIn) -> None:
    endpoint = runpod.Endpoint(ENDPOINT)  # no workers: everything stays queued
    job = await asyncio.to_thread(endpoint.run, {"prompt": "a quill"})
    others = [await asyncio.to_thread(endpoint.run, {"prompt": f"scroll {n}"}) for n in range(3)]
    assert await asyncio.to_thread(job.cancel) == {"id": job.job_id, "status": "CANCELLED"}
    assert await asyncio.to_thread(job.status) == "CANCELLED"
    assert (await asyncio.to_thread(endpoint.health))["jobs"]["inQueue"] == 3
    assert await asyncio.to_thread(endpoint.purge_queue) == {"removed": 3, "status": "completed"}
    health = await asyncio.to_thread(endpoint.health)
    assert health["jobs"]["inQueue"] == 0
    assert all(other.job_id not in standin.platform.jobs for other in others)


async def test_health_counts_workers_and_jobs(standin: RunPodStandIn) -> None:
    workers = standin.synthetic_workers(count=3)
    endpoint = runpod.Endpoint(ENDPOINT)
    for n in range(2):
        await asyncio.to_thread(endpoint.run_sync, {"input": {"prompt": f"a coin {n}"}}, 10)
    health = await asyncio.to_thread(endpoint.health)
    assert health["jobs"]["completed"] == 2
    assert health["workers"]["ready"] == 3
    await workers.stop()


async def test_a_wrong_key_is_refused(standin: RunPodStandIn) -> None:
    endpoint = runpod.Endpoint(ENDPOINT, api_key="not-the-key")
    with pytest.raises(RuntimeError, match="Unauthorized"):
        await asyncio.to_thread(endpoint.run, {"prompt": "x"})
    async with standin.client() as client:
        unauthenticated = await client.post("/run", json={"input": {}}, headers={"Authorization": ""})
        assert (unauthenticated.status_code, unauthenticated.json()["error"]) == (
            401,
            "Unauthorized: missing or invalid API key",
        )


async def test_an_unknown_job_or_endpoint_is_404(standin: RunPodStandIn) -> None:
    async with standin.client() as client:
        missing = await client.get("/status/no-such-job")
        assert (missing.status_code, missing.json()) == (404, {"error": "request does not exist"})
        other = await client.get(f"{standin.base_url}/other-endpoint/health")
        assert other.status_code == 404
