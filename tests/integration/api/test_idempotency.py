"""Idempotency-Key on generate-images: one batch per (caller, key, body), whatever the retries,
the replicas or the concurrency; another body with the key is refused."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.client import submit
from tests.integration.api.conftest import USER_B, Api, ApiFactory
from tests.integration.dispatcher.conftest import Cloud, DispatcherFactory

GENERATE = "/functions/v1/generate-images"
BODY = {"prompts": ["The Rosetta Stone"], "wait": False}


async def batches(database_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        row = await (await conn.execute("select count(*) from image_batches")).fetchone()
    return int(row[0]) if row else 0


async def test_a_retry_with_the_same_key_and_body_answers_the_first_batch(api: Api) -> None:
    async with api.client(api.token()) as client:
        first = await client.post(GENERATE, json=BODY, headers={"Idempotency-Key": "order-1"})
        again = await client.post(GENERATE, json=BODY, headers={"Idempotency-Key": "order-1"})
        other_body = await client.post(
            GENERATE, json={**BODY, "quality": "high"}, headers={"Idempotency-Key": "order-1"}
        )
        other_key = await client.post(GENERATE, json=BODY, headers={"Idempotency-Key": "order-2"})
        no_key = await client.post(GENERATE, json=BODY)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["batch_id"] == first.json()["batch_id"]
    assert again.json()["status_url"] == first.json()["status_url"]
    assert other_body.status_code == 422
    assert "already used with another body" in other_body.json()["error"]
    assert other_key.status_code == 202
    assert other_key.json()["batch_id"] != first.json()["batch_id"]
    assert no_key.status_code == 202
    assert await batches(api.database_url) == 3


async def test_keys_are_per_caller_and_shared_by_every_replica(start_api: ApiFactory) -> None:
    async with start_api() as one, start_api() as two:
        async with one.client(one.token()) as a, two.client(two.token()) as a_elsewhere:
            first = await a.post(GENERATE, json=BODY, headers={"Idempotency-Key": "k"})
            replica = await a_elsewhere.post(GENERATE, json=BODY, headers={"Idempotency-Key": "k"})
        async with two.client(two.token(USER_B)) as b:
            theirs = await b.post(GENERATE, json=BODY, headers={"Idempotency-Key": "k"})
    assert replica.status_code == 200
    assert replica.json()["batch_id"] == first.json()["batch_id"]
    assert theirs.status_code == 202
    assert theirs.json()["batch_id"] != first.json()["batch_id"]


async def test_concurrent_requests_with_one_key_make_one_batch(api: Api) -> None:
    async with api.client(api.token()) as client:
        answers = await asyncio.gather(
            *(client.post(GENERATE, json=BODY, headers={"Idempotency-Key": "burst"}) for _ in range(8))
        )
    assert sorted(answer.status_code for answer in answers) == [200] * 7 + [202]
    assert len({answer.json()["batch_id"] for answer in answers}) == 1
    assert await batches(api.database_url) == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(max_size=300))
async def test_any_key_is_used_or_refused_with_a_4xx_never_a_5xx(api: Api, key: str) -> None:
    headers: dict[str, Any] = {"Idempotency-Key": key.encode("utf-8").decode("latin-1")}
    async with api.client(api.keys.service_role_key) as client:  # an admin: not rate-limited
        try:
            answer = await client.post(GENERATE, json=BODY, headers=headers)
        except (UnicodeEncodeError, ValueError, httpx.LocalProtocolError):  # httpx will not send it
            return
    assert answer.status_code in (200, 202, 400, 422), answer.text


async def test_a_key_past_its_24_hours_makes_a_new_batch_and_expired_keys_are_swept(api: Api) -> None:
    async with api.client(api.token()) as client:
        first = await client.post(GENERATE, json=BODY, headers={"Idempotency-Key": "old-order"})
        await client.post(GENERATE, json=BODY, headers={"Idempotency-Key": "older-order"})
        async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True) as conn:
            await conn.execute("update image_idempotency_keys set created_at = now() - interval '25 hours'")
        again = await client.post(GENERATE, json=BODY, headers={"Idempotency-Key": "old-order"})
    assert again.status_code == 202
    assert again.json()["batch_id"] != first.json()["batch_id"]
    async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True) as conn:
        keys = await (await conn.execute("select key from image_idempotency_keys")).fetchall()
    assert keys == [("old-order",)], "the other expired key went with that request"


async def test_zimage_submit_sends_again_after_a_lost_answer_and_one_batch_is_made(
    start_api: ApiFactory, cloud: Cloud, dispatcher: DispatcherFactory
) -> None:
    cloud.add_workers(count=2, seconds="0.05")
    async with start_api() as api, dispatcher():
        port = urlsplit(api.url).port
        connections = 0

        async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            """The first connection reaches the app, which makes the batch, and then drops before
            the answer; the others pass through."""
            nonlocal connections
            connections += 1
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            if connections == 1:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                up_writer.write(head + await reader.readexactly(length))
                await up_writer.drain()
                await up_reader.read(1)  # the app has answered: the batch exists
                for w in (writer, up_writer):
                    w.close()
                return

            async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
                while chunk := await source.read(65536):
                    sink.write(chunk)
                    await sink.drain()
                sink.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

        server = await asyncio.start_server(proxy, "127.0.0.1", 0)
        proxy_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            complete = await submit(proxy_url, api.token(), {"prompts": ["The Rosetta Stone, found"]}, None)
        finally:
            server.close()
    assert complete["total"] == 1
    assert connections == 2
    assert await batches(api.database_url) == 1
