"""Real workers (``python -m worker`` under the runpod SDK's own loop, on the tiny offline
pipeline) taking jobs from the stand-in, driven by the official runpod client."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import runpod
from PIL import Image

from devstack.runpod_api import build_runpod_app
from devstack.runpod_platform import JobStatus, Platform
from devstack.servers import LoopbackServer
from devstack.workers import WorkerProcesses
from tests.integration.devstack.conftest import API_KEY, ENDPOINT, WORKER_KEY

SMALL = {"prompt": "a Roman aqueduct at dusk", "width": 256, "height": 256}


@dataclass
class RealStack:
    platform: Platform
    workers: WorkerProcesses


@pytest.fixture(scope="module")
async def real_stack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RealStack]:
    platform = Platform([ENDPOINT], seed=3)
    server = LoopbackServer(build_runpod_app(platform, API_KEY, WORKER_KEY, take_timeout_s=2), "runpod")
    await platform.start()
    await server.start()
    workers = WorkerProcesses(
        server.url,
        ENDPOINT,
        WORKER_KEY,
        str(tiny_model),
        count=2,
        log_dir=tmp_path_factory.mktemp("worker-logs"),
    )
    workers.start()
    await workers.wait_until_ready(platform.worker_seen, timeout_s=120)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runpod, "api_key", API_KEY)
        patch.setattr(runpod, "endpoint_url_base", f"{server.url}/v2")
        yield RealStack(platform, workers)
    await platform.close()
    await asyncio.to_thread(workers.stop)
    await server.stop()


async def test_the_official_client_runs_jobs_on_real_workers(real_stack: RealStack) -> None:
    endpoint = runpod.Endpoint(ENDPOINT)
    jobs = [await asyncio.to_thread(endpoint.run, {**SMALL, "seed": seed}) for seed in (1, 2, 3)]
    outputs = [await asyncio.to_thread(job.output, 60) for job in jobs]
    assert [output["seed"] for output in outputs] == [1, 2, 3]
    for output in outputs:
        image = Image.open(io.BytesIO(base64.b64decode(output["image_base64"])))
        assert (image.format, image.size) == ("PNG", (256, 256))
    workers_used = {real_stack.platform.jobs[job.job_id].worker_id for job in jobs}
    assert workers_used <= {"worker-0", "worker-1"}
    synced = await asyncio.to_thread(endpoint.run_sync, {"input": {**SMALL, "seed": 1}}, 60)
    assert synced["image_base64"] == outputs[0]["image_base64"], "same seed, same bytes, across workers"


async def test_invalid_input_fails_with_the_workers_message(real_stack: RealStack) -> None:
    job = await asyncio.to_thread(runpod.Endpoint(ENDPOINT).run, {"prompt": "x", "aspectRatio": "4:3"})
    await asyncio.to_thread(job.output, 60)
    assert await asyncio.to_thread(job.status) == "FAILED"
    error = json.loads(real_stack.platform.jobs[job.job_id].error or "{}")
    assert (error["error_type"], error["retryable"]) == ("invalid_input", False)
    assert error["error_message"].startswith("aspectRatio: must be one of")


async def test_cancel_stops_the_job_on_its_worker(real_stack: RealStack) -> None:
    endpoint = runpod.Endpoint(ENDPOINT)
    job = await asyncio.to_thread(
        endpoint.run, {"prompt": "a big map", "aspectRatio": "1:1", "quality": "high"}
    )
    deadline = time.monotonic() + 30
    while real_stack.platform.jobs[job.job_id].status is JobStatus.IN_QUEUE:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert (await asyncio.to_thread(job.cancel))["status"] == "CANCELLED"
    follow_up = await asyncio.to_thread(endpoint.run_sync, {"input": {**SMALL, "seed": 5}}, 60)
    assert follow_up["seed"] == 5, "the workers keep serving after a cancellation"
    assert real_stack.platform.jobs[job.job_id].status is JobStatus.CANCELLED


async def test_a_worker_killed_mid_job_leaves_the_job_to_time_out(real_stack: RealStack) -> None:
    endpoint = runpod.Endpoint(ENDPOINT)
    job = await asyncio.to_thread(
        endpoint.run,
        {
            "input": {"prompt": "the Parthenon", "aspectRatio": "1:1", "quality": "high"},
            "policy": {"executionTimeout": 4000},
        },
    )
    record = real_stack.platform.jobs[job.job_id]
    deadline = time.monotonic() + 30
    while record.status is not JobStatus.IN_PROGRESS:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert record.worker_id is not None
    await asyncio.to_thread(real_stack.workers.kill, record.worker_id)
    await asyncio.to_thread(job.output, 30)
    assert await asyncio.to_thread(job.status) == "TIMED_OUT"
    real_stack.workers.spawn(record.worker_id)  # leave the fixture as it was found


async def test_a_job_longer_than_an_idle_keep_alive_still_reports(real_stack: RealStack) -> None:
    """The worker posts its result on a connection idle for the whole job (here, on 2 CPU cores, well
    over uvicorn's default 5 s keep-alive, which made this POST die with a broken pipe)."""
    endpoint = runpod.Endpoint(ENDPOINT)
    job = await asyncio.to_thread(
        endpoint.run,
        {"prompt": "a panorama of Rome", "width": 1280, "height": 1280, "quality": "high", "seed": 2},
    )
    output = await asyncio.to_thread(job.output, 90)
    record = real_stack.platform.jobs[job.job_id]
    assert record.status is JobStatus.COMPLETED, record.error
    assert (output["width"], output["height"]) == (1280, 1280)
