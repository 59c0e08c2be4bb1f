"""Idempotency-Key on generate-images: one batch per (caller, key, body), whatever the retries,
the replicas or the concurrency; another body with the key is refused."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.api.conftest import USER_B, Api, ApiFactory

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
