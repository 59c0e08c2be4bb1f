"""The whole path with real workers: python -m worker under the runpod SDK, on the tiny pipeline."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from devstack.workers import WorkerProcesses
from dispatcher.images import png_size
from tests.integration.dispatcher.conftest import (
    ENDPOINTS,
    Cloud,
    DispatcherFactory,
    insert_batch,
    jobs_of,
    wait_for_batch,
)


async def test_a_batch_runs_on_real_workers(
    database_url: str,
    cloud: Cloud,
    dispatcher: DispatcherFactory,
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    workers = WorkerProcesses(
        cloud.runpod_server.url,
        ENDPOINTS[0],
        "rpw_test",
        str(tiny_model),
        count=2,
        log_dir=tmp_path_factory.mktemp("worker-logs"),
    )
    workers.start()
    try:
        await workers.wait_until_ready(cloud.platform.worker_seen, timeout_s=120)
        async with dispatcher():
            batch_id = await insert_batch(database_url, ["Hadrian's Wall", "The Globe Theatre"], seed=77)
            complete = await wait_for_batch(database_url, batch_id, timeout_s=90)
    finally:
        await asyncio.to_thread(workers.stop)
    jobs = await jobs_of(database_url, batch_id)
    assert complete["failed"] == 0
    for job in jobs:
        assert (job["status"], job["seed"], job["steps"]) == ("succeeded", 77, 9)
        png = (cloud.storage.root / "generated-assets" / job["storage_path"]).read_bytes()
        assert png_size(png) == (1024, 576)
        assert job["timings"]["inference_ms"] > 0, "the worker's own timings are kept"
