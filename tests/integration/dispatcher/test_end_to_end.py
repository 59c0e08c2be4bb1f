"""A batch inserted as the frontend inserts it ends with every image stored and every step recorded."""

from __future__ import annotations

from pathlib import Path

from devstack.png import png_size
from tests.integration.dispatcher.conftest import (
    Cloud,
    DispatcherFactory,
    events_of,
    insert_batch,
    jobs_of,
    wait_for_batch,
)

PROMPTS = ["The fall of Constantinople, 1453", "A Viking longship at sea", "The Rosetta Stone"]


async def test_a_batch_is_generated_stored_and_recorded(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=3)
    async with dispatcher():
        batch_id = await insert_batch(database_url, PROMPTS, quality="high", aspect_ratio="9:16")
        complete = await wait_for_batch(database_url, batch_id)
    jobs = await jobs_of(database_url, batch_id)
    assert [job["status"] for job in jobs] == ["succeeded"] * 3
    assert complete == {
        "success": True,
        "total": 3,
        "failed": 0,
        "images": [job["image_url"] for job in jobs],
    }
    for job in jobs:
        path = f"generated-images/{job['id']}.png"
        assert job["storage_path"] == path
        assert (
            job["image_url"] == f"{cloud.storage_server.url}/storage/v1/object/public/generated-assets/{path}"
        )
        stored = cloud.storage.root / "generated-assets" / path
        assert png_size(stored.read_bytes()) == (576, 1024)
        assert (job["width"], job["height"], job["steps"], job["attempts"]) == (576, 1024, 16, 1)
        assert job["seed"] is not None
        assert job["lease_owner"] is None
    kinds = [kind for kind, _ in await events_of(database_url, batch_id)]
    assert kinds[0] == "progress"
    assert kinds.count("claimed") == kinds.count("submitted") == kinds.count("image") == 3
    assert kinds[-1] == "complete"
    messages = [
        payload["message"] for kind, payload in await events_of(database_url, batch_id) if kind == "progress"
    ]
    assert messages == ["Creating 3 image jobs...", "1/3 images done", "2/3 images done", "3/3 images done"]


async def test_timed_prompts_of_a_project_get_the_old_functions_names(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory, tmp_path: Path
) -> None:
    cloud.add_workers(count=2)
    timings = '[{"index": 1, "startTime": 0, "endTime": 4.5}, {"index": 2, "startTime": 4.5, "endTime": 9}]'
    async with dispatcher():
        batch_id = await insert_batch(database_url, ["a", "b"], project_id="proj-42", timings=timings)
        await wait_for_batch(database_url, batch_id)
    paths = [job["storage_path"] for job in await jobs_of(database_url, batch_id)]
    assert paths == ["proj-42/images/image_001_0_to_4.5.png", "proj-42/images/image_002_4.5_to_9.png"]
    assert all((cloud.storage.root / "generated-assets" / path).exists() for path in paths)


async def test_a_seeded_repeat_reuses_the_stored_image(
    database_url: str, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=2)
    async with dispatcher():
        first = await insert_batch(database_url, ["The Battle of Hastings"], seed=1066)
        await wait_for_batch(database_url, first)
        runs_before = cloud.platform.counters.submits
        again = await insert_batch(database_url, ["The Battle of Hastings"], seed=1066)
        await wait_for_batch(database_url, again)
    assert cloud.platform.counters.submits == runs_before, "no GPU run for the repeat"
    (original,), (reused,) = await jobs_of(database_url, first), await jobs_of(database_url, again)
    assert reused["status"] == "succeeded"
    assert reused["timings"] == {"reused": True}
    stored = cloud.storage.root / "generated-assets"
    assert (stored / reused["storage_path"]).read_bytes() == (stored / original["storage_path"]).read_bytes()
