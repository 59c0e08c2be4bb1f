"""The frontend that exists today works unchanged: its exact way of calling generate-images and
reading the stream, through the app, a real dispatcher, the RunPod stand-in and storage."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.integration.api.conftest import ApiFactory
from tests.integration.dispatcher.conftest import Cloud, DispatcherFactory

GENERATE = "/functions/v1/generate-images"


async def read_like_the_old_client(response: httpx.Response) -> list[dict[str, Any]]:
    """generateImagesStreaming: split the body on blank lines, take each block's first line if it
    is ``data: ``, parse it, dispatch on ``type``."""
    events: list[dict[str, Any]] = []
    buffer = ""
    async for chunk in response.aiter_text():
        buffer += chunk
        *blocks, buffer = buffer.split("\n\n")
        for block in blocks:
            first_line = block.split("\n")[0]
            if first_line.startswith("data: "):
                events.append(json.loads(first_line[len("data: ") :]))
    return events


async def test_the_old_streaming_client_with_the_anon_key_and_timed_prompts(
    start_api: ApiFactory, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=3)
    body = {
        "prompts": [
            {"index": 1, "prompt": "Julius Caesar crossing the Rubicon", "startTime": 0, "endTime": 4.5},
            {"index": 2, "prompt": "The Senate of Rome", "startTime": 4.5, "endTime": 9},
        ],
        "quality": "basic",
        "aspectRatio": "16:9",
        "stream": True,
        "projectId": "project-42",
    }
    async with start_api() as api, dispatcher():
        headers = {"Authorization": f"Bearer {api.keys.anon_key}", "Content-Type": "application/json"}
        async with (
            httpx.AsyncClient(base_url=api.url, timeout=30) as client,
            client.stream("POST", GENERATE, json=body, headers=headers) as response,
        ):
            assert response.status_code == 200
            events = await read_like_the_old_client(response)
    progress = [e for e in events if e["type"] == "progress"]
    assert progress[0]["message"] == "Creating 2 image jobs..."
    assert progress[-1] | {"type": None, "batch_id": None} == {
        "type": None,
        "batch_id": None,
        "completed": 2,
        "failed": 0,
        "total": 2,
        "message": "2/2 images done",
    }
    complete = events[-1]
    assert complete["type"] == "complete"
    assert complete["success"] is True
    assert complete["failed"] == 0
    assert [url.rsplit("/", 3)[-3:] for url in complete["images"]] == [
        ["project-42", "images", "image_001_0_to_4.5.png"],
        ["project-42", "images", "image_002_4.5_to_9.png"],
    ]
    stored = sorted(
        p.name for p in (cloud.storage.root / "generated-assets" / "project-42" / "images").iterdir()
    )
    assert stored == ["image_001_0_to_4.5.png", "image_002_4.5_to_9.png"]


async def test_without_stream_the_answer_is_the_finished_batch(
    start_api: ApiFactory, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=2)
    async with start_api() as api, dispatcher(), api.client(api.token()) as client:
        response = await client.post(
            GENERATE, json={"prompts": ["The Alamo", "Waterloo"], "aspectRatio": "1:1"}
        )
    answer = response.json()
    assert response.status_code == 200
    assert answer["success"] is True
    assert answer["total"] == 2
    assert len(answer["images"]) == 2
    async with httpx.AsyncClient() as client:
        image = await client.get(answer["images"][0])
    assert image.headers["content-type"] == "image/png"
