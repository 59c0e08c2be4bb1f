"""generate-images as an attacker or a careless client uses it: every bad request gets a 4xx with
a JSON error naming the field, never a 5xx; anything accepted can be run; limits cannot be dodged
by a header; the app survives a Postgres restart without a failed request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devstack.postgres import PostgresCluster
from tests.integration.api.conftest import USER_A, USER_B, Api, ApiFactory
from tests.integration.dispatcher.conftest import Cloud, DispatcherFactory, wait_for_batch
from tests.integration.dispatcher.test_characters import adapter_file
from zimage.characters import CharacterSettings, NewCharacter, add_character

GENERATE = "/functions/v1/generate-images"


async def post_raw(api: Api, body: bytes, token: str | None = None) -> httpx.Response:
    async with api.client(token or api.token()) as client:
        return await client.post(GENERATE, content=body, headers={"content-type": "application/json"})


def good(**changes: Any) -> dict[str, Any]:
    return {"prompts": ["The Bastille, 1789"], "wait": False, **changes}


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (json.dumps(good(prompts=["a\x00b"])), 400, "prompts[0]: must not contain a NUL character"),
        (json.dumps(good(projectId="p\x00")), 400, "projectId: must not contain a NUL character"),
        (json.dumps(good(quality="basic\x00")), 400, "quality: must not contain a NUL character"),
        ('{"prompts": ["\\ud800"], "wait": false}', 400, "prompts[0]: contains a lone surrogate"),
        (json.dumps(good(seed=2**63)), 400, "seed: must be between 0 and 4294967295"),
        (json.dumps(good(seed=-1)), 400, "seed: must be between 0 and 4294967295"),
        (
            '{"prompts": [{"index": 1, "prompt": "a", "startTime": NaN, "endTime": 1}], "wait": false}',
            400,
            "the body must be JSON (UTF-8, no NaN or Infinity)",
        ),
        ("[" * 100_000 + "]" * 100_000, 400, "the body is nested more than 16 levels deep"),
        (json.dumps(good(x=[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]])), 400, "the body is nested more than 16"),
        (b"\xff\xfe{}", 400, "the body must be JSON (UTF-8, no NaN or Infinity)"),
        (
            json.dumps(good(prompts=[{"index": "abc", "prompt": "a", "startTime": 0, "endTime": 1}])),
            400,
            "prompts[0].index: must be an integer from 0 to 99999, got abc",
        ),
        (
            json.dumps(good(prompts=[{"index": 1, "prompt": "a", "startTime": "9" * 5000, "endTime": 1}])),
            400,
            "prompts[0].startTime: must be a number of seconds",
        ),
        (
            json.dumps(good(prompts=[{"index": 1e300, "prompt": "a", "startTime": 0, "endTime": 1}])),
            400,
            "prompts[0].index: must be an integer",
        ),
        (
            json.dumps(
                good(
                    prompts=[
                        {"index": 2, "prompt": "a", "startTime": 0, "endTime": 1},
                        {"index": 2, "prompt": "b", "startTime": 1, "endTime": 2},
                    ],
                    projectId="p",
                )
            ),
            400,
            "prompts: each index may appear once in a batch, repeated: 2",
        ),
        (json.dumps(good(projectId="..")), 400, "projectId: 1 to 128 letters, digits"),
        (json.dumps(good(projectId="x" * 2000)), 400, "projectId: 1 to 128 letters, digits"),
        (json.dumps(good(prompts=["\u00a0\u00a0"])), 400, "prompts[0]: prompt is empty or blank"),
    ],
    ids=lambda value: value if isinstance(value, int) else None,
)
async def test_bad_bodies_get_a_4xx_json_error_naming_the_field(
    api: Api, body: str | bytes, status: int, error: str
) -> None:
    response = await post_raw(api, body.encode() if isinstance(body, str) else body)
    assert response.status_code == status, response.text
    assert response.json()["success"] is False
    assert response.json()["error"].startswith(error), response.json()["error"]


async def test_a_valid_token_whose_user_does_not_exist_gets_401(api: Api) -> None:
    response = await post_raw(
        api, json.dumps(good()).encode(), api.token("cccccccc-0000-0000-0000-00000000000c")
    )
    assert (response.status_code, response.json()["error"]) == (
        401,
        "the token's user does not exist in this project",
    )


async def test_a_body_over_the_limit_gets_413(start_api: ApiFactory) -> None:
    async with start_api(max_body_bytes=64 * 1024) as api:
        big = json.dumps(good(prompts=["x" * 1000] * 70)).encode()
        response = await post_raw(api, big)
        assert (response.status_code, response.json()["success"]) == (413, False)
        async with api.client(api.token()) as client:  # no content-length: streamed

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(10):
                    yield b"x" * 8192

            response = await client.post(GENERATE, content=chunks())
        assert response.status_code == 413


async def test_another_users_project_is_refused_with_403(api: Api) -> None:
    timed = [{"index": 1, "prompt": "a", "startTime": 0, "endTime": 1}]
    await api.submit(timed, projectId="rome")  # type: ignore[arg-type]
    async with api.client(api.token("bbbbbbbb-0000-0000-0000-00000000000b")) as client:
        response = await client.post(GENERATE, json=good(prompts=timed, projectId="rome"))
    assert (response.status_code, response.json()["error"]) == (
        403,
        "projectId: the project rome belongs to another user",
    )


async def test_unknown_routes_and_wrong_methods_answer_json(api: Api) -> None:
    async with api.client() as client:
        missing = await client.get("/functions/v1/no-such-function")
        wrong = await client.get(GENERATE)
    assert (missing.status_code, missing.json()) == (404, {"success": False, "error": "Not Found"})
    assert (wrong.status_code, wrong.json()["success"]) == (405, False)
    assert wrong.headers["content-type"].startswith("application/json")


async def test_made_up_forwarded_addresses_do_not_buy_anon_callers_more_calls(start_api: ApiFactory) -> None:
    async with (
        start_api(rate_limit_burst=5, rate_limit_per_minute=1) as api,
        api.client(api.keys.anon_key) as client,
    ):
        codes = [
            (
                await client.post(GENERATE, json=good(), headers={"x-forwarded-for": f"203.0.113.{i}"})
            ).status_code
            for i in range(40)
        ]
    assert (codes.count(202), codes.count(429)) == (5, 35)


async def test_behind_a_trusted_proxy_the_nearest_untrusted_hop_is_the_client(start_api: ApiFactory) -> None:
    async with (
        start_api(rate_limit_burst=1, rate_limit_per_minute=1, trusted_proxies="127.0.0.0/8") as api,
        api.client(api.keys.anon_key) as client,
    ):

        async def call(forwarded: str) -> int:
            response = await client.post(GENERATE, json=good(), headers={"x-forwarded-for": forwarded})
            return response.status_code

        # a client writes the leftmost hops; the proxy appends the address it saw
        assert await call("6.6.6.1, 198.51.100.7") == 202
        assert await call("6.6.6.2, 198.51.100.7") == 429  # same client, new forged hop
        assert await call("198.51.100.8") == 202
        assert await call("198.51.100.9, 127.0.0.5") == 202  # through two trusted proxies
    async with await psycopg.AsyncConnection.connect(api.database_url) as conn:
        buckets = await (await conn.execute("select key from image_rate_limits order by key")).fetchall()
    assert [key for (key,) in buckets] == ["anon:198.51.100.7", "anon:198.51.100.8", "anon:198.51.100.9"]


async def test_no_request_fails_after_postgres_restarts(api: Api, postgres: PostgresCluster) -> None:
    await api.submit(["before"])
    await asyncio.to_thread(postgres.restart)
    codes = []
    for _ in range(6):
        async with api.client(api.token()) as client:
            codes.append((await client.post(GENERATE, json=good())).status_code)
    assert codes == [202] * 6


# ---- properties ----------------------------------------------------------------------------------
NASTY = st.sampled_from(["\x00", "\ud800", "\u00a0", "\u200b", "..", "/", "NaN", "9" * 300, "é"])
VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | NASTY,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
# Characters by name: "<napoleon>" is replaced by its id once the test has registered it.
CHARACTER = st.sampled_from(["<napoleon>", "<nelson>", "<josephine>", "<unknown>"]) | VALUE
WEIGHT = st.floats(-1, 3) | VALUE
TIMED = st.fixed_dictionaries(
    {"prompt": st.text(max_size=8) | NASTY, "index": VALUE, "startTime": VALUE, "endTime": VALUE},
    optional={"character_id": CHARACTER, "character_weight": WEIGHT},
)
CAST = st.fixed_dictionaries(
    {"prompt": st.sampled_from(["at Austerlitz", "at sea"]) | NASTY},
    optional={"character_id": CHARACTER, "character_weight": WEIGHT},
)
BODY = st.fixed_dictionaries(
    {"wait": st.just(False)},
    optional={
        "prompts": st.lists(st.text(max_size=10) | NASTY, max_size=3)
        | st.lists(TIMED, max_size=3)
        | st.lists(CAST, max_size=3)
        | st.lists(
            st.integers(0, 3).map(
                lambda i: {"index": i, "prompt": f"p{i}", "startTime": i, "endTime": i + 1}
            ),
            max_size=3,
        )
        | VALUE,
        "quality": st.sampled_from(["basic", "high"]) | VALUE,
        "aspectRatio": st.sampled_from(["16:9", "1:1", "9:16"]) | VALUE,
        "projectId": st.sampled_from(["rome", "athens"]) | VALUE,
        "seed": st.integers(-5, 2**64) | VALUE,
        "format": st.sampled_from(["png", "webp", "jpeg"]) | VALUE,
        "output_quality": st.integers(-5, 2**64) | VALUE,
        "webhook": st.sampled_from(["https://hooks.example.com/x", "http://h.example", "https://10.0.0.1/"])
        | VALUE,
        "webhook_events": st.lists(st.sampled_from(["image", "failed", "complete", "x"]), max_size=3) | VALUE,
        "character_id": CHARACTER,
        "character_weight": WEIGHT,
    },
)


def with_ids(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("<") and value.endswith(">") and value[1:-1] in ids:
        return ids[value[1:-1]]
    if isinstance(value, list):
        return [with_ids(item, ids) for item in value]
    if isinstance(value, dict):
        return {key: with_ids(item, ids) for key, item in value.items()}
    return value


async def register_characters(api: Api, cloud: Cloud, tmp_path: Path) -> dict[str, str]:
    """A's private Napoleon and shared Josephine, B's private Nelson, with adapter files in the
    Storage stand-in, through the registry's own code."""
    registry = CharacterSettings.model_validate(
        {
            "database_url": api.database_url,
            "supabase_url": cloud.storage_server.url,
            "supabase_service_role_key": cloud.keys.service_role_key,
        }
    )
    ids = {"unknown": "0c0c0c0c-0000-4000-8000-000000000000"}
    for name, owner, shared in (
        ("napoleon", USER_A, False),
        ("nelson", USER_B, False),
        ("josephine", USER_A, True),
    ):
        new = NewCharacter(
            owner, name, adapter_file(tmp_path / f"{name}.safetensors", name[:1].encode()), shared=shared
        )
        ids[name] = str((await asyncio.to_thread(add_character, registry, new))["id"])
    return ids


async def test_any_body_gets_a_json_answer_below_500_and_whatever_is_accepted_runs_once_and_succeeds(
    start_api: ApiFactory, cloud: Cloud, dispatcher: DispatcherFactory, tmp_path: Path
) -> None:
    accepted: list[str] = []
    async with start_api(rate_limit_burst=100_000) as api:
        tokens = [api.token(), api.token(USER_B), api.keys.anon_key]
        ids = await register_characters(api, cloud, tmp_path)

        @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body=BODY, who=st.sampled_from(tokens))
        @example(body={"wait": False, "prompts": ["a plain one"]}, who=tokens[0])
        @example(
            body={
                "wait": False,
                "prompts": [{"index": 2, "prompt": "a timed one", "startTime": 1, "endTime": 2}],
                "projectId": "rome",
                "format": "webp",
                "output_quality": 80,
                "webhook": "https://hooks.example.com/x",
                "webhook_events": ["image", "complete"],
            },
            who=tokens[0],
        )
        @example(
            body={
                "wait": False,
                "prompts": [{"prompt": "at sea"}, {"prompt": "at home", "character_id": "<josephine>"}],
                "character_id": "<nelson>",
                "character_weight": 0.5,
            },
            who=tokens[1],
        )
        def post(body: dict[str, Any], who: str) -> None:
            body = with_ids(body, ids)
            with httpx.Client(base_url=api.url, timeout=20) as client:
                headers = {"Authorization": f"Bearer {who}", "content-type": "application/json"}
                # json.dumps escapes what is not ASCII, lone surrogates included, as a browser would
                response = client.post(GENERATE, content=json.dumps(body).encode(), headers=headers)
            assert response.status_code < 500, (body, response.text)
            answer = response.json()
            if response.status_code == 202:
                accepted.append(answer["batch_id"])
            else:
                assert 400 <= response.status_code < 500
                assert answer["success"] is False, answer
                assert answer["error"], answer

        await asyncio.to_thread(post)  # the app runs on this loop; hypothesis drives it from a thread
        assert accepted, "some bodies were accepted"
        cloud.add_workers(count=4, seconds="0.01")
        async with dispatcher(max_in_flight_per_user=64):
            for batch_id in accepted:
                complete = await wait_for_batch(api.database_url, UUID(batch_id), timeout_s=60)
                assert complete["failed"] == 0, complete
        async with await psycopg.AsyncConnection.connect(api.database_url) as conn:
            row = await (
                await conn.execute(
                    "select count(*), max(attempts), count(*) filter (where adapter_path is not null)"
                    " from image_jobs"
                )
            ).fetchone()
    assert row is not None
    assert row[2] > 0, "some accepted jobs had a character"
    assert cloud.platform.counters.submits == row[0], "each accepted job ran on the GPU exactly once"
    assert row[1] == 1
