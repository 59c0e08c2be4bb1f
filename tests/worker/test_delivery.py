"""The real handler on the tiny pipeline, delivering as the job asks: PNG, WebP or JPEG, as
base64 in the result or uploaded straight to a signed Storage URL (the Storage stand-in's,
made with the official storage3 client)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from storage3 import AsyncStorageClient

from devstack.keys import LocalKeys
from devstack.postgres import free_port
from devstack.servers import LoopbackServer
from devstack.storage import Bucket, LocalStorage
from worker.handler import Handler, make_handler
from worker.pipeline import ImageGenerator

BUCKET = "generated-assets"
SCENE = {"prompt": "the Forum at noon", "width": 256, "height": 256, "seed": 5}


class Storage:
    def __init__(self, local: LocalStorage, server: LoopbackServer, http: httpx.AsyncClient) -> None:
        self.local, self.server = local, server
        headers = {
            "Authorization": f"Bearer {local.keys.service_role_key}",
            "apikey": local.keys.service_role_key,
        }
        self.bucket = AsyncStorageClient(f"{server.url}/storage/v1/", headers, http_client=http).from_(BUCKET)

    async def upload_url(self, path: str) -> str:
        return str((await self.bucket.create_signed_upload_url(path))["signed_url"])

    def stored(self, path: str) -> bytes:
        return self.local.path_of(BUCKET, path).read_bytes()


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    local = LocalStorage(tmp_path / "storage", LocalKeys())
    local.add_bucket(
        Bucket(
            BUCKET,
            public=True,
            file_size_limit=20 * 1024 * 1024,
            allowed_mime_types=["image/png", "image/jpeg", "image/webp"],
        )
    )
    server = await LoopbackServer(local.app(), "storage").start()
    async with httpx.AsyncClient(timeout=10) as http:
        yield Storage(local, server, http)
    await server.stop()


async def run(handler: Handler, **job_input: Any) -> dict[str, Any]:
    """The handler is synchronous (as RunPod calls it): off the loop the stand-in serves on."""
    return await asyncio.to_thread(handler, {"id": "test-job", "input": job_input})


@pytest.mark.parametrize(
    ("image_format", "pillow_format"), [("png", "PNG"), ("webp", "WEBP"), ("jpeg", "JPEG")]
)
async def test_each_format_comes_back_as_base64_of_that_format(
    handler: Handler, image_format: str, pillow_format: str
) -> None:
    output = await run(handler, **SCENE, format=image_format)
    data = base64.b64decode(output["image_base64"])
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == (pillow_format, (256, 256))
    assert (output["format"], output["bytes"], output["sha256"]) == (
        image_format,
        len(data),
        hashlib.sha256(data).hexdigest(),
    )


async def test_output_quality_trades_bytes_for_fidelity_and_png_refuses_it(handler: Handler) -> None:
    low = await run(handler, **SCENE, format="jpeg", output_quality=20)
    high = await run(handler, **SCENE, format="jpeg", output_quality=95)
    assert low["bytes"] < high["bytes"]
    refused = await run(handler, **SCENE, output_quality=80)
    error = json.loads(refused["error"])
    assert (error["error_type"], error["retryable"]) == ("invalid_input", False)
    assert error["error_message"].startswith("output_quality:")


async def test_with_an_upload_url_the_image_goes_to_storage_and_the_answer_is_small(
    handler: Handler, storage: Storage
) -> None:
    path = "generated-images/direct.webp"
    output = await run(
        handler, **SCENE, format="webp", upload_url=await storage.upload_url(path), storage_path=path
    )
    assert "image_base64" not in output
    stored = storage.stored(path)
    assert (output["storage_path"], output["stored"], output["bytes"], output["sha256"]) == (
        path,
        "uploaded",
        len(stored),
        hashlib.sha256(stored).hexdigest(),
    )
    assert storage.local.objects[(BUCKET, path)].content_type == "image/webp"
    assert output["timings"]["upload_ms"] > 0
    assert len(json.dumps(output)) < 2048


async def test_a_second_run_finds_the_first_runs_image_there_and_changes_nothing(
    handler: Handler, storage: Storage
) -> None:
    # Two submissions of one job, both signed before either ran (once an object is there,
    # Storage refuses to sign another upload of its key).
    path = "generated-images/twice.png"
    urls = [await storage.upload_url(path) for _ in range(2)]
    first = await run(handler, **SCENE, upload_url=urls[0], storage_path=path)
    second = await run(handler, **{**SCENE, "seed": 6}, upload_url=urls[1], storage_path=path)
    assert (first["stored"], second["stored"]) == ("uploaded", "exists")
    assert hashlib.sha256(storage.stored(path)).hexdigest() == first["sha256"] != second["sha256"]
    assert storage.local.writes[(BUCKET, path)] == 1


async def test_a_forged_or_expired_url_fails_retryably(handler: Handler, storage: Storage) -> None:
    path = "generated-images/forged.png"
    url = await storage.upload_url(path)
    output = await run(handler, **SCENE, upload_url=url[:-4] + "abcd", storage_path=path)
    error = json.loads(output["error"])
    assert (error["error_type"], error["retryable"]) == ("upload_failed", True)
    assert (BUCKET, path) not in storage.local.objects


async def test_storage_out_of_reach_fails_retryably(handler: Handler) -> None:
    url = f"http://127.0.0.1:{free_port()}/storage/v1/object/upload/sign/{BUCKET}/a.png?token=t"
    output = await run(handler, **SCENE, upload_url=url, storage_path="a.png")
    error = json.loads(output["error"])
    assert (error["error_type"], error["retryable"]) == ("upload_failed", True)
    assert "could not be reached" in error["error_message"]


def test_an_upload_url_needs_its_storage_path(handler: Handler) -> None:
    output = handler({"id": "j", "input": {**SCENE, "upload_url": "https://example.invalid/x"}})
    assert json.loads(output["error"])["error_message"].startswith(
        "upload_url: give upload_url and storage_path"
    )


async def test_a_2048_square_png_goes_by_upload_whatever_the_base64_limit(
    generator: ImageGenerator, storage: Storage
) -> None:
    # The limit that refuses it as base64 (test_handler) does not apply to an upload.
    handler = make_handler(generator, max_output_bytes=10_000)
    path = "generated-images/big.png"
    big = {"prompt": "the Library of Alexandria", "width": 2048, "height": 2048, "seed": 3}
    output = await run(handler, **big, upload_url=await storage.upload_url(path), storage_path=path)
    assert output["stored"] == "uploaded", output
    with Image.open(io.BytesIO(storage.stored(path))) as image:
        assert image.size == (2048, 2048)
    assert output["bytes"] > 10_000
