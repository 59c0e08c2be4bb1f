"""The official storage3 client (through supabase's storage API), unchanged, against the stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from storage3.exceptions import StorageApiError

from devstack.png import solid_png
from supabase import AsyncClient, AsyncClientOptions, acreate_client
from tests.devstack.conftest import StorageStandIn

BUCKET = "generated-assets"
PNG = solid_png(64, 36)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def connect(standin: StorageStandIn, key: str, http: httpx.AsyncClient) -> AsyncClient:
    """A supabase client whose HTTP connections the test owns (and closes)."""
    return await acreate_client(standin.server.url, key, options=AsyncClientOptions(httpx_client=http))


async def test_upload_upsert_list_download_and_public_url(
    storage_standin: StorageStandIn, http: httpx.AsyncClient
) -> None:
    supabase = await connect(storage_standin, storage_standin.keys.service_role_key, http)
    bucket = supabase.storage.from_(BUCKET)
    uploaded = await bucket.upload("generated-images/a.png", PNG, {"content-type": "image/png"})
    assert uploaded.full_path == f"{BUCKET}/generated-images/a.png"
    with pytest.raises(StorageApiError) as duplicate:
        await bucket.upload("generated-images/a.png", PNG, {"content-type": "image/png"})
    assert duplicate.value.status == "409"
    replacement = solid_png(32, 32)
    await bucket.upload(
        "generated-images/a.png", replacement, {"content-type": "image/png", "upsert": "true"}
    )
    await bucket.upload("project-1/images/image_001_0_to_5.png", PNG, {"content-type": "image/png"})

    listing = await bucket.list("generated-images")
    assert [
        (entry["name"], entry["metadata"]["size"], entry["metadata"]["mimetype"]) for entry in listing
    ] == [
        ("a.png", len(replacement), "image/png"),
    ]
    assert [entry["name"] for entry in await bucket.list()] == ["generated-images", "project-1"]
    assert await bucket.download("generated-images/a.png") == replacement
    assert await bucket.exists("generated-images/a.png")
    assert not await bucket.exists("generated-images/missing.png")

    url = await bucket.get_public_url("generated-images/a.png")
    assert url == f"{storage_standin.server.url}/storage/v1/object/public/{BUCKET}/generated-images/a.png"
    public = await http.get(url)
    head = await http.head(url)
    assert (public.status_code, public.headers["content-type"], public.content) == (
        200,
        "image/png",
        replacement,
    )
    assert (head.status_code, int(head.headers["content-length"])) == (200, len(replacement))
    assert (storage_standin.storage.root / BUCKET / "generated-images" / "a.png").read_bytes() == replacement

    removed = await bucket.remove(["generated-images/a.png"])
    assert [entry["name"] for entry in removed] == ["generated-images/a.png"]
    assert not await bucket.exists("generated-images/a.png")


async def test_writes_need_the_service_role_key(
    storage_standin: StorageStandIn, http: httpx.AsyncClient
) -> None:
    anon = await connect(storage_standin, storage_standin.keys.anon_key, http)
    with pytest.raises(StorageApiError) as refused:
        await anon.storage.from_(BUCKET).upload("x.png", PNG, {"content-type": "image/png"})
    assert refused.value.status == "403"
    forged = await connect(storage_standin, storage_standin.keys.service_role_key[:-4] + "AAAA", http)
    with pytest.raises(StorageApiError):
        await forged.storage.from_(BUCKET).upload("x.png", PNG, {"content-type": "image/png"})
    assert storage_standin.storage.objects == {}


async def test_bucket_rules_are_enforced(storage_standin: StorageStandIn, http: httpx.AsyncClient) -> None:
    bucket = (await connect(storage_standin, storage_standin.keys.service_role_key, http)).storage.from_(
        BUCKET
    )
    with pytest.raises(StorageApiError) as wrong_type:
        await bucket.upload("notes.txt", b"hello", {"content-type": "text/plain"})
    assert wrong_type.value.status == "415"
    with pytest.raises(StorageApiError) as too_big:
        await bucket.upload("big.png", b"\0" * (1024 * 1024 + 1), {"content-type": "image/png"})
    assert too_big.value.status == "413"
    with pytest.raises(ValueError, match="dot segments"):  # storage3 refuses it before sending
        await bucket.upload("../escape.png", PNG, {"content-type": "image/png"})
    traversal = await http.post(  # and the stand-in refuses it when another client sends it
        f"{storage_standin.server.url}/storage/v1/object/{BUCKET}/%2E%2E/escape.png",
        content=PNG,
        headers={
            "Authorization": f"Bearer {storage_standin.keys.service_role_key}",
            "Content-Type": "image/png",
        },
    )
    assert (traversal.status_code, traversal.json()["error"]) == (400, "InvalidKey")
    assert not (storage_standin.storage.root / "escape.png").exists()
    missing = (await connect(storage_standin, storage_standin.keys.service_role_key, http)).storage.from_(
        "nope"
    )
    with pytest.raises(StorageApiError) as no_bucket:
        await missing.upload("x.png", PNG, {"content-type": "image/png"})
    assert no_bucket.value.status == "404"


async def test_buckets_list_get_and_create(storage_standin: StorageStandIn, http: httpx.AsyncClient) -> None:
    storage = (await connect(storage_standin, storage_standin.keys.service_role_key, http)).storage
    await storage.create_bucket("private-things", options={"public": False})
    assert sorted(bucket.id for bucket in await storage.list_buckets()) == [BUCKET, "private-things"]
    assert (await storage.get_bucket(BUCKET)).public is True
    await storage.from_("private-things").upload("a.png", PNG, {"content-type": "image/png"})
    hidden = await http.get(f"{storage_standin.server.url}/storage/v1/object/public/private-things/a.png")
    assert hidden.status_code == 400


async def test_a_raw_body_upload_as_the_dispatcher_sends_it(
    storage_standin: StorageStandIn, http: httpx.AsyncClient
) -> None:
    url = f"{storage_standin.server.url}/storage/v1/object/{BUCKET}/generated-images/raw.png"
    headers = {
        "Authorization": f"Bearer {storage_standin.keys.service_role_key}",
        "Content-Type": "image/png",
        "x-upsert": "true",
    }
    for _ in range(2):  # upsert: the second write replaces the first
        answer = await http.post(url, content=PNG, headers=headers)
        assert (answer.status_code, answer.json()["Key"]) == (200, f"{BUCKET}/generated-images/raw.png")
    assert (storage_standin.storage.root / BUCKET / "generated-images" / "raw.png").read_bytes() == PNG
