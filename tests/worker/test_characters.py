"""Character adapters on the real handler and the tiny pipeline: tiny random LoRA adapters
(peft) for its transformer, kept in a private bucket of the Storage stand-in and fetched through
the short-lived download URLs the dispatcher signs (with the official storage3 client)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send
from storage3 import AsyncStorageClient

from devstack.keys import LocalKeys
from devstack.servers import LoopbackServer
from devstack.storage import Bucket, LocalStorage
from worker.adapters import AdapterCache, AdapterRequest
from worker.handler import Handler, make_handler
from worker.pipeline import ImageGenerator
from worker.settings import WorkerSettings

BUCKET = "character-adapters"
SCENE = {"prompt": "napoleon_zit crossing the Alps", "width": 256, "height": 256, "seed": 11}


class CountingDownloads:
    """The stand-in's app, counting the GETs of each signed download URL's object."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.gets = app, Counter[str]()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and "/object/sign/" in scope["path"]:
            self.gets[scope["path"].rsplit("/", 1)[1]] += 1
        await self.app(scope, receive, send)


class Adapters:
    """Tiny adapters in the private bucket, as `zimage characters add` puts them there."""

    def __init__(
        self, local: LocalStorage, counting: CountingDownloads, url: str, http: httpx.AsyncClient
    ) -> None:
        self.local, self.counting = local, counting
        headers = {
            "Authorization": f"Bearer {local.keys.service_role_key}",
            "apikey": local.keys.service_role_key,
        }
        self.bucket = AsyncStorageClient(f"{url}/storage/v1/", headers, http_client=http).from_(BUCKET)

    async def put(self, name: str, data: bytes) -> str:
        await self.bucket.upload(name, data, {"content-type": "application/octet-stream"})
        return hashlib.sha256(data).hexdigest()

    async def lora(
        self, name: str, sha256: str, weight: float = 1.0, expires_in: int = 600
    ) -> dict[str, Any]:
        signed = await self.bucket.create_signed_url(name, expires_in)
        return {"url": signed["signedURL"], "sha256": sha256, "weight": weight}

    def downloads(self, name: str) -> int:
        return self.counting.gets[name]


@pytest.fixture(scope="module")
def adapter_files(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from worker.tiny import build_tiny_adapter

    directory = tmp_path_factory.mktemp("adapters")
    return {
        name: build_tiny_adapter(tiny_model, directory / f"{name}.safetensors", seed).read_bytes()
        for name, seed in (("napoleon", 1), ("josephine", 2), ("nelson", 3))
    }


@pytest.fixture
async def adapters(tmp_path: Path) -> AsyncIterator[Adapters]:
    local = LocalStorage(tmp_path / "storage", LocalKeys())
    local.add_bucket(Bucket(BUCKET, False, 512 * 1024 * 1024, ["application/octet-stream"]))
    counting = CountingDownloads(local.app())
    server = await LoopbackServer(counting, "storage").start()
    async with httpx.AsyncClient(timeout=10) as http:
        yield Adapters(local, counting, server.url, http)
    await server.stop()


@pytest.fixture
def generator(tiny_model: Path) -> ImageGenerator:
    """A worker of its own: adapters loaded by one test must not leak into the next."""
    return ImageGenerator.load(WorkerSettings(model_id=str(tiny_model), lora_max_loaded=2))


@pytest.fixture
def cache(tmp_path: Path) -> AdapterCache:
    return AdapterCache(tmp_path / "lora-cache", max_bytes=10 * 1024 * 1024)


@pytest.fixture
def handler(generator: ImageGenerator, cache: AdapterCache) -> Handler:
    return make_handler(generator, adapter_cache=cache)


async def run(handler: Handler, **job_input: Any) -> dict[str, Any]:
    return await asyncio.to_thread(handler, {"id": "character-job", "input": job_input})


def image(answer: dict[str, Any]) -> bytes:
    assert "image_base64" in answer, answer
    return base64.b64decode(answer["image_base64"])


def error(answer: dict[str, Any]) -> dict[str, Any]:
    import json

    assert "error" in answer, answer
    return dict(json.loads(answer["error"]))


async def test_an_adapter_changes_the_image_and_the_same_adapter_gives_it_again(
    handler: Handler, adapters: Adapters, adapter_files: dict[str, bytes]
) -> None:
    sha = await adapters.put("napoleon.safetensors", adapter_files["napoleon"])
    base = image(await run(handler, **SCENE))
    first = await run(handler, **SCENE, lora=await adapters.lora("napoleon.safetensors", sha))
    again = await run(handler, **SCENE, lora=await adapters.lora("napoleon.safetensors", sha))
    assert image(first) != base
    assert image(again) == image(first)
    assert first["lora"] == {"sha256": sha, "weight": 1.0}
    assert first["timings"]["lora_download_ms"] > 0
    assert again["timings"]["lora_download_ms"] == 0
    assert first["timings"]["lora_load_ms"] > 0
    assert again["timings"]["lora_load_ms"] == 0
    assert {"lora_switch_ms"} <= set(again["timings"])
    assert adapters.downloads("napoleon.safetensors") == 1
    half = await run(handler, **SCENE, lora=await adapters.lora("napoleon.safetensors", sha, weight=0.5))
    assert image(half) not in (base, image(first))


async def test_switching_a_b_none_a_gives_each_its_own_image_and_none_is_a_fresh_workers(
    handler: Handler, adapters: Adapters, adapter_files: dict[str, bytes], tiny_model: Path
) -> None:
    a = await adapters.put("napoleon.safetensors", adapter_files["napoleon"])
    b = await adapters.put("josephine.safetensors", adapter_files["josephine"])
    a1 = image(await run(handler, **SCENE, lora=await adapters.lora("napoleon.safetensors", a)))
    b1 = image(await run(handler, **SCENE, lora=await adapters.lora("josephine.safetensors", b)))
    after = await run(handler, **SCENE)
    a2 = image(await run(handler, **SCENE, lora=await adapters.lora("napoleon.safetensors", a)))
    fresh = make_handler(ImageGenerator.load(WorkerSettings(model_id=str(tiny_model))))
    assert a1 == a2
    assert len({a1, b1, image(after)}) == 3
    assert image(after) == image(await run(fresh, **SCENE))
    assert after["timings"]["lora_switch_ms"] >= 0  # leaving the adapter is reported too
    assert "lora" not in after


async def test_the_oldest_loaded_adapter_makes_way_and_comes_back_identical(
    handler: Handler, generator: ImageGenerator, adapters: Adapters, adapter_files: dict[str, bytes]
) -> None:
    shas = {name: await adapters.put(f"{name}.safetensors", data) for name, data in adapter_files.items()}

    async def with_(name: str) -> dict[str, Any]:
        return await run(handler, **SCENE, lora=await adapters.lora(f"{name}.safetensors", shas[name]))

    first = await with_("napoleon")
    await with_("josephine")
    await with_("nelson")  # capacity 2: napoleon is unloaded
    assert len(generator.adapters.loaded) == 2
    back = await with_("napoleon")
    assert back["timings"]["lora_load_ms"] > 0
    assert back["timings"]["lora_download_ms"] == 0
    assert image(back) == image(first)


async def test_a_corrupt_file_fails_for_good_and_leaves_nothing_in_the_cache(
    handler: Handler, adapters: Adapters, cache: AdapterCache
) -> None:
    sha = await adapters.put("garbage.safetensors", b"not a safetensors file" * 100)
    failed = error(await run(handler, **SCENE, lora=await adapters.lora("garbage.safetensors", sha)))
    assert failed["error_type"] == "adapter_invalid"
    assert failed["retryable"] is False
    assert "cannot be applied" in failed["error_message"]
    assert not cache.path_of(sha).exists()
    assert image(await run(handler, **SCENE))  # the worker serves on


async def test_a_file_that_does_not_match_its_hash_fails_for_good(
    handler: Handler, adapters: Adapters, adapter_files: dict[str, bytes], cache: AdapterCache
) -> None:
    await adapters.put("napoleon.safetensors", adapter_files["napoleon"])
    wrong = hashlib.sha256(b"another file").hexdigest()
    failed = error(await run(handler, **SCENE, lora=await adapters.lora("napoleon.safetensors", wrong)))
    assert failed["error_type"] == "adapter_invalid"
    assert failed["retryable"] is False
    assert "not to the registry's" in failed["error_message"]
    assert list(cache.directory.glob("*.safetensors")) == []
    assert list(cache.directory.glob("*.part")) == []


async def test_an_adapter_for_another_model_fails_for_good(
    handler: Handler, adapters: Adapters, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"transformer.unet_block.lora_A.weight": torch.zeros(4, 8)}, foreign)
    sha = await adapters.put("foreign.safetensors", foreign.read_bytes())
    failed = error(await run(handler, **SCENE, lora=await adapters.lora("foreign.safetensors", sha)))
    assert failed["error_type"] == "adapter_invalid"
    assert failed["retryable"] is False


async def test_a_download_that_fails_is_retryable(
    handler: Handler, adapters: Adapters, adapter_files: dict[str, bytes]
) -> None:
    sha = await adapters.put("napoleon.safetensors", adapter_files["napoleon"])
    expired = await adapters.lora("napoleon.safetensors", sha, expires_in=-1)
    forged = {**expired, "url": expired["url"].replace("token=", "token=x")}
    unreachable = {**expired, "url": "http://127.0.0.1:9/object/sign/x"}
    for lora in (expired, forged, unreachable):
        failed = error(await run(handler, **SCENE, lora=lora))
        assert failed["error_type"] == "adapter_download_failed"
        assert failed["retryable"] is True


async def test_two_jobs_wanting_a_new_adapter_at_once_download_it_once(
    adapters: Adapters, adapter_files: dict[str, bytes], cache: AdapterCache
) -> None:
    sha = await adapters.put("napoleon.safetensors", adapter_files["napoleon"])
    lora = await adapters.lora("napoleon.safetensors", sha)
    request = AdapterRequest(lora["url"], sha)
    start = threading.Barrier(4)

    def fetch() -> Path:
        start.wait()
        return cache.fetch(request).path

    paths = await asyncio.gather(*(asyncio.to_thread(fetch) for _ in range(4)))
    assert adapters.downloads("napoleon.safetensors") == 1
    assert {path.read_bytes() for path in paths} == {adapter_files["napoleon"]}


async def test_the_cache_keeps_to_its_size_least_recently_used_first(
    adapters: Adapters, adapter_files: dict[str, bytes], tmp_path: Path
) -> None:
    one = len(adapter_files["napoleon"])
    cache = AdapterCache(tmp_path / "small-cache", max_bytes=2 * one + one // 2)
    shas = {name: await adapters.put(f"{name}.safetensors", data) for name, data in adapter_files.items()}

    async def fetch(name: str) -> None:
        lora = await adapters.lora(f"{name}.safetensors", shas[name])
        await asyncio.to_thread(cache.fetch, AdapterRequest(lora["url"], shas[name]))

    await fetch("napoleon")
    await fetch("josephine")
    await fetch("napoleon")  # used again: josephine is now the least recent
    await fetch("nelson")
    assert {path.stem for path in cache.directory.glob("*.safetensors")} == {shas["napoleon"], shas["nelson"]}
