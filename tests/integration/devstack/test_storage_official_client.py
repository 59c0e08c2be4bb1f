"""The official storage3 client (through supabase's storage API), unchanged, against the stand-in."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest
from storage3.exceptions import StorageApiError

from devstack.png import solid_png
from supabase import AsyncClient, AsyncClientOptions, acreate_client
from tests.integration.devstack.conftest import StorageStandIn

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


# ---- answered as the Storage API server answers ------------------------------------------------
def api(standin: StorageStandIn, path: str) -> str:
    return f"{standin.server.url}/storage/v1/{path}"


async def test_errors_are_http_400_with_the_real_status_in_the_body(
    storage_standin: StorageStandIn, http: httpx.AsyncClient
) -> None:
    service = {
        "Authorization": f"Bearer {storage_standin.keys.service_role_key}",
        "Content-Type": "image/png",
    }
    url = api(storage_standin, f"object/{BUCKET}/dup.png")
    assert (await http.post(url, content=PNG, headers=service)).status_code == 200
    duplicate = await http.post(url, content=PNG, headers=service)
    missing = await http.get(api(storage_standin, f"object/{BUCKET}/missing.png"), headers=service)
    public_missing = await http.get(api(storage_standin, f"object/public/{BUCKET}/missing.png"))
    wrong_type = await http.post(
        api(storage_standin, f"object/{BUCKET}/a.txt"),
        content=b"x",
        headers={**service, "Content-Type": "text/plain"},
    )
    too_big = await http.post(
        api(storage_standin, f"object/{BUCKET}/big.png"), content=b"\0" * (1024 * 1024 + 1), headers=service
    )
    answers = {
        name: (response.status_code, response.json()["statusCode"], response.json()["error"])
        for name, response in {
            "duplicate": duplicate,
            "missing": missing,
            "public missing": public_missing,
            "wrong type": wrong_type,
            "too big": too_big,
        }.items()
    }
    assert answers == {
        "duplicate": (400, "409", "Duplicate"),
        "missing": (400, "404", "not_found"),
        "public missing": (400, "404", "not_found"),
        "wrong type": (400, "415", "invalid_mime_type"),
        "too big": (400, "413", "Payload too large"),
    }
    assert duplicate.json()["message"] == "The resource already exists"
    for response in (duplicate, missing):
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert response.headers["x-robots-tag"] == "none"


async def test_private_objects_are_refused_to_every_key_but_the_service_roles(
    storage_standin: StorageStandIn, http: httpx.AsyncClient
) -> None:
    keys = storage_standin.keys
    storage = (await connect(storage_standin, keys.service_role_key, http)).storage
    await storage.create_bucket("private-things", options={"public": False})
    await storage.from_("private-things").upload("secret.png", PNG, {"content-type": "image/png"})
    for key in (keys.anon_key, keys.user_token("aaaaaaaa-0000-0000-0000-00000000000a")):
        other = (await connect(storage_standin, key, http)).storage.from_("private-things")
        with pytest.raises(StorageApiError) as refused:
            await other.download("secret.png")
        assert refused.value.status == "404"
        assert await other.list() == []
        with pytest.raises(StorageApiError):
            await other.create_signed_url("secret.png", 60)
    assert await storage.from_("private-things").download("secret.png") == PNG


async def test_a_key_that_fails_its_signature_is_refused_except_for_public_objects(
    storage_standin: StorageStandIn, http: httpx.AsyncClient
) -> None:
    keys = storage_standin.keys
    await (
        (await connect(storage_standin, keys.service_role_key, http))
        .storage.from_(BUCKET)
        .upload("open.png", PNG, {"content-type": "image/png"})
    )
    forged = {"Authorization": f"Bearer {keys.service_role_key[:-4]}AAAA", "apikey": keys.anon_key}
    upload = await http.post(
        api(storage_standin, f"object/{BUCKET}/x.png"),
        content=PNG,
        headers={**forged, "Content-Type": "image/png"},
    )
    listing = await http.post(
        api(storage_standin, f"object/list/{BUCKET}"), json={"prefix": ""}, headers=forged
    )
    public = await http.get(api(storage_standin, f"object/public/{BUCKET}/open.png"), headers=forged)
    for refused in (upload, listing):
        assert (refused.status_code, refused.json()["message"]) == (400, "signature verification failed")
    assert (public.status_code, public.content) == (200, PNG)


async def test_etags_are_the_contents_md5_and_listings_and_copies_carry_the_whole_row(
    storage_standin: StorageStandIn, http: httpx.AsyncClient
) -> None:
    bucket = (await connect(storage_standin, storage_standin.keys.service_role_key, http)).storage.from_(
        BUCKET
    )
    await bucket.upload("images/a.png", PNG, {"content-type": "image/png"})
    md5 = f'"{hashlib.md5(PNG).hexdigest()}"'
    downloaded = await http.get(api(storage_standin, f"object/public/{BUCKET}/images/a.png"))
    assert downloaded.headers["etag"] == md5
    assert (await bucket.info("images/a.png"))["etag"] == md5
    (entry,) = await bucket.list("images")
    assert {
        "eTag",
        "size",
        "mimetype",
        "cacheControl",
        "lastModified",
        "contentLength",
        "httpStatusCode",
    } <= set(entry["metadata"])
    assert entry["metadata"]["eTag"] == md5
    copied = await http.post(
        api(storage_standin, "object/copy"),
        json={"bucketId": BUCKET, "sourceKey": "images/a.png", "destinationKey": "images/b.png"},
        headers={"Authorization": f"Bearer {storage_standin.keys.service_role_key}"},
    )
    row = copied.json()
    assert row["Key"] == f"{BUCKET}/images/b.png"
    assert {"id", "name", "bucket_id", "version", "metadata", "created_at", "updated_at"} <= set(row)


async def test_signed_download_urls(storage_standin: StorageStandIn, http: httpx.AsyncClient) -> None:
    storage = (await connect(storage_standin, storage_standin.keys.service_role_key, http)).storage
    await storage.create_bucket("private-things", options={"public": False})
    bucket = storage.from_("private-things")
    await bucket.upload("a.png", PNG, {"content-type": "image/png"})
    await bucket.upload("b.png", solid_png(8, 8), {"content-type": "image/png"})
    signed = (await bucket.create_signed_url("a.png", 60))["signedURL"]
    assert signed is not None
    assert signed.startswith(
        f"{storage_standin.server.url}/storage/v1/object/sign/private-things/a.png?token="
    )
    fetched = await http.get(signed)
    assert (fetched.status_code, fetched.content) == (200, PNG)
    for forged in (signed[:-3] + "abc", signed.replace("/a.png?", "/b.png?")):
        refused = await http.get(forged)
        assert (refused.status_code, refused.json()["error"]) == (400, "InvalidSignature")


async def test_signed_upload_urls(storage_standin: StorageStandIn, http: httpx.AsyncClient) -> None:
    bucket = (await connect(storage_standin, storage_standin.keys.service_role_key, http)).storage.from_(
        BUCKET
    )
    signed = await bucket.create_signed_upload_url("direct/a.png")
    # whoever holds the URL uploads, with no key of their own (a worker)
    anonymous = (await connect(storage_standin, storage_standin.keys.anon_key, http)).storage.from_(BUCKET)
    uploaded = await anonymous.upload_to_signed_url(
        "direct/a.png", signed["token"], PNG, {"content-type": "image/png"}
    )
    assert uploaded.full_path == f"{BUCKET}/direct/a.png"
    assert (storage_standin.storage.root / BUCKET / "direct" / "a.png").read_bytes() == PNG
    with pytest.raises(StorageApiError) as again:  # not an upsert URL: the key is taken now
        await anonymous.upload_to_signed_url(
            "direct/a.png", signed["token"], PNG, {"content-type": "image/png"}
        )
    assert again.value.status == "409"
    with pytest.raises(StorageApiError) as elsewhere:  # the token names its one key
        await anonymous.upload_to_signed_url(
            "direct/b.png", signed["token"], PNG, {"content-type": "image/png"}
        )
    assert elsewhere.value.status == "400"
    with pytest.raises(StorageApiError) as not_signer:
        await anonymous.create_signed_upload_url("direct/c.png")
    assert not_signer.value.status == "403"
