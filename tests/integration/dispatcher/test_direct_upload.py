"""Images that go straight from the worker to Storage: what crosses RunPod, what is stored and
checked, the formats, the project keys, and the guarantees for duplicate and lost runs."""

from __future__ import annotations

import hashlib
import io
import json

import httpx
import pytest
from PIL import Image

from devstack.png import solid_png
from dispatcher.storage import SupabaseStorage
from tests.integration.dispatcher.conftest import (
    Cloud,
    DispatcherFactory,
    events_of,
    insert_batch,
    jobs_of,
    wait_for_batch,
)

BUCKET = "generated-assets"
TIMED = '[{"index": 1, "startTime": 0, "endTime": 1}]'


def stored(cloud: Cloud, path: str) -> bytes:
    return cloud.storage.path_of(BUCKET, path).read_bytes()


async def put(cloud: Cloud, path: str, data: bytes) -> None:
    """An object at a key, as a run whose answer was lost would have left it."""
    async with httpx.AsyncClient(timeout=10) as http:
        storage = SupabaseStorage(http, cloud.storage_server.url, cloud.keys.service_role_key, BUCKET)
        await storage.upload(path, data, "image/png")


async def test_only_a_small_answer_crosses_runpod_and_the_stored_image_is_the_checked_one(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=2)
    async with dispatcher():
        batch = await insert_batch(database_url, [f"the Acropolis, view {n}" for n in range(4)])
        assert (await wait_for_batch(database_url, batch))["failed"] == 0
    for job in await jobs_of(database_url, batch):
        data = stored(cloud, job["storage_path"])
        assert hashlib.sha256(data).hexdigest() == job["image_sha256"]
        assert cloud.storage.writes[(BUCKET, job["storage_path"])] == 1
    answers = [job.output for job in cloud.platform.jobs.values()]
    assert all("image_base64" not in answer for answer in answers)
    assert max(len(json.dumps(answer)) for answer in answers) < 2048
    inputs = [job.input for job in cloud.platform.jobs.values()]
    assert all(i["upload_url"].startswith(cloud.storage_server.url) for i in inputs)


@pytest.mark.parametrize(
    ("image_format", "pillow_format", "extension"), [("webp", "WEBP", "webp"), ("jpeg", "JPEG", "jpg")]
)
async def test_a_lossy_format_is_stored_under_its_extension_and_type(
    database_url: str,
    cloud: Cloud,
    dispatcher: DispatcherFactory,
    image_format: str,
    pillow_format: str,
    extension: str,
) -> None:
    cloud.add_workers(count=1)
    async with dispatcher():
        batch = await insert_batch(database_url, ["a Roman mosaic"], format=image_format, output_quality=70)
        assert (await wait_for_batch(database_url, batch))["failed"] == 0
    (job,) = await jobs_of(database_url, batch)
    assert job["storage_path"] == f"generated-images/{job['id']}.{extension}"
    assert (job["format"], job["output_quality"]) == (image_format, 70)
    assert cloud.storage.objects[(BUCKET, job["storage_path"])].content_type == f"image/{image_format}"
    with Image.open(io.BytesIO(stored(cloud, job["storage_path"]))) as image:
        assert (image.format, image.size) == (pillow_format, (1024, 576))
    (submitted,) = cloud.platform.jobs.values()
    assert (submitted.input["format"], submitted.input["output_quality"]) == (image_format, 70)


async def test_a_project_key_gets_the_checked_image_and_a_later_batch_replaces_it(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=1)
    async with dispatcher():
        first = await insert_batch(database_url, ["the first take"], project_id="troy", timings=TIMED)
        await wait_for_batch(database_url, first)
        second = await insert_batch(database_url, ["the second take"], project_id="troy", timings=TIMED)
        await wait_for_batch(database_url, second)
    (one,), (two,) = [await jobs_of(database_url, batch) for batch in (first, second)]
    assert one["storage_path"] == two["storage_path"] == "troy/images/image_001_0_to_1.png"
    assert one["image_sha256"] != two["image_sha256"]
    assert hashlib.sha256(stored(cloud, two["storage_path"])).hexdigest() == two["image_sha256"]
    # each job's own upload key is gone once its image is at the project's key
    assert not [key for (_, key) in cloud.storage.objects if key.startswith("uploads/")]


async def test_an_image_already_at_the_key_is_checked_and_kept_without_a_run(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=1)
    async with dispatcher():
        pass  # the schema is migrated: insert with no dispatcher running
    batch = await insert_batch(database_url, ["a scene whose answer went astray"])
    (job,) = await jobs_of(database_url, batch)
    left_behind = solid_png(1024, 576, (10, 20, 30))
    await put(cloud, job["storage_path"], left_behind)
    async with dispatcher():
        assert (await wait_for_batch(database_url, batch))["failed"] == 0
    (job,) = await jobs_of(database_url, batch)
    assert job["image_sha256"] == hashlib.sha256(left_behind).hexdigest()
    assert job["timings"]["found_stored"] is True
    assert cloud.platform.counters.runs_started == 0


@pytest.mark.parametrize("left_behind", [b"not an image", solid_png(512, 512)])
async def test_a_bad_object_at_the_key_is_removed_and_the_job_runs(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory, left_behind: bytes
) -> None:
    cloud.add_workers(count=1)
    async with dispatcher():
        pass
    batch = await insert_batch(database_url, ["a scene with debris at its key"])
    (job,) = await jobs_of(database_url, batch)
    await put(cloud, job["storage_path"], left_behind)
    async with dispatcher():
        assert (await wait_for_batch(database_url, batch))["failed"] == 0
    (job,) = await jobs_of(database_url, batch)
    assert (job["status"], job["attempts"]) == ("succeeded", 2)
    assert "found_stored" not in job["timings"]
    data = stored(cloud, job["storage_path"])
    assert hashlib.sha256(data).hexdigest() == job["image_sha256"]
    assert data != left_behind


async def test_two_runs_of_one_job_store_one_image_the_first(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.platform.faults.update({"rate_duplicate_run": 1.0})
    cloud.add_workers(count=2, seconds="0.2")
    async with dispatcher():
        batch = await insert_batch(database_url, ["a scene RunPod ran twice"], seed=4)
        assert (await wait_for_batch(database_url, batch))["failed"] == 0
    (job,) = await jobs_of(database_url, batch)
    assert cloud.storage.writes[(BUCKET, job["storage_path"])] == 1
    assert hashlib.sha256(stored(cloud, job["storage_path"])).hexdigest() == job["image_sha256"]


async def test_an_upload_url_that_expired_before_the_worker_ran_is_made_afresh_on_retry(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.storage.expired_upload_urls = 1  # the first URL had expired when the worker ran
    cloud.add_workers(count=1)
    async with dispatcher():
        batch = await insert_batch(database_url, ["a scene that waited too long"])
        assert (await wait_for_batch(database_url, batch))["failed"] == 0
    (job,) = await jobs_of(database_url, batch)
    assert (job["status"], job["attempts"]) == ("succeeded", 2)
    assert "retrying" in [kind for kind, _ in await events_of(database_url, batch)]
    urls = {submitted.input["upload_url"] for submitted in cloud.platform.jobs.values()}
    assert len(urls) == len(cloud.platform.jobs) == 2, "each submission signs its own URL"
    failures = [submitted.error for submitted in cloud.platform.jobs.values() if submitted.error]
    assert all(json.loads(error)["error_type"] == "upload_failed" for error in failures)
