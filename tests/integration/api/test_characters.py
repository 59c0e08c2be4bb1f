"""Characters through the HTTP functions: generate-images takes a character per batch and per
prompt, refuses one the caller may not use (naming it, inserting nothing), and
GET /functions/v1/characters lists what the caller may use, as row level security says."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import psycopg
import pytest

from tests.integration.api.conftest import USER_A, USER_B, Api

GENERATE = "/functions/v1/generate-images"


@pytest.fixture
async def characters(api: Api) -> dict[str, str]:
    """A's private Napoleon and shared Josephine, B's private Nelson (as the registry makes them)."""
    rows = {
        "napoleon": (USER_A, "Napoleon", "napoleon_zit", False),
        "josephine": (USER_A, "Josephine", None, True),
        "nelson": (USER_B, "Nelson", "nelson_zit", False),
    }
    ids = {key: str(uuid.uuid4()) for key in rows}
    async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True) as conn:
        for key, (owner, name, trigger, shared) in rows.items():
            await conn.execute(
                "insert into characters (id, owner_id, name, trigger_phrase, adapter_path, adapter_sha256,"
                " adapter_bytes, shared) values (%s, %s, %s, %s, %s, %s, 1000, %s)",
                (
                    ids[key],
                    owner,
                    name,
                    trigger,
                    f"{owner}/{key}.safetensors",
                    hashlib.sha256(key.encode()).hexdigest(),
                    shared,
                ),
            )
    return ids


async def post(api: Api, body: dict[str, Any], user: str = USER_A) -> tuple[int, dict[str, Any]]:
    async with api.client(api.token(user)) as client:
        response = await client.post(GENERATE, json={"wait": False, **body})
    return response.status_code, response.json()


def fill(value: Any, ids: dict[str, str]) -> Any:
    """The body with each "{name}" replaced by that character's id."""
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, list):
        return [fill(item, ids) for item in value]
    if isinstance(value, dict):
        return {key: fill(item, ids) for key, item in value.items()}
    return value


async def batches_of(api: Api, user: str) -> int:
    async with await psycopg.AsyncConnection.connect(api.database_url) as conn:
        row = await (
            await conn.execute("select count(*) from image_batches where user_id = %s", (user,))
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_batch_and_its_prompts_name_their_characters(api: Api, characters: dict[str, str]) -> None:
    status, answer = await post(
        api,
        {
            "prompts": [
                {"prompt": "at Austerlitz"},
                {"prompt": "at Malmaison", "character_id": characters["josephine"], "character_weight": 1.2},
            ],
            "character_id": characters["napoleon"],
            "character_weight": 0.9,
        },
    )
    assert status == 202, answer
    async with api.client(api.token()) as client:
        snapshot = (await client.get(f"/functions/v1/batch-status?batch_id={answer['batch_id']}")).json()
    assert snapshot["character_id"] == characters["napoleon"]
    assert snapshot["character_weight"] == pytest.approx(0.9)
    assert [(job["prompt"], job["character_id"]) for job in snapshot["jobs"]] == [
        ("napoleon_zit, at Austerlitz", characters["napoleon"]),
        ("at Malmaison", characters["josephine"]),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"character_id": "{nelson}"}, "character_id: no character {nelson} that you may use"),
        ({"character_id": "{unknown}"}, "character_id: no character {unknown} that you may use"),
        (
            {"prompts": [{"prompt": "a"}, {"prompt": "b", "character_id": "{nelson}"}]},
            "prompts[1].character_id: no character {nelson} that you may use",
        ),
        ({"character_id": "nelson"}, "character_id: must be a character id (a UUID)"),
        ({"character_id": 7}, "character_id: must be a character id (a UUID)"),
        ({"character_weight": 0.5}, "character_weight: applies only with a character_id"),
        ({"character_id": "{napoleon}", "character_weight": 3}, "character_weight: must be between 0 and 2"),
        ({"character_id": "{napoleon}", "character_weight": "strong"}, "character_weight: must be a number"),
        (
            {"prompts": [{"prompt": "a", "character_weight": 1}]},
            "prompts[0].character_weight: applies only with a character_id",
        ),
        (
            {"prompts": ["x" * 995], "character_id": "{napoleon}"},
            "prompts[0]: with the trigger phrase of character Napoleon the prompt is over 1000 characters",
        ),
    ],
)
async def test_a_character_the_caller_may_not_use_or_a_bad_shape_is_a_400_naming_it(
    api: Api, characters: dict[str, str], body: dict[str, Any], message: str
) -> None:
    characters = {**characters, "unknown": str(uuid.uuid4())}
    filled = fill(body, characters)
    status, answer = await post(api, {"prompts": ["a scene"], **filled})
    assert status == 400, answer
    assert answer["error"].startswith(message.format(**characters)), answer
    assert await batches_of(api, USER_A) == 0, "nothing was inserted"


async def test_the_list_is_the_callers_own_and_the_shared_ones(api: Api, characters: dict[str, str]) -> None:
    async with api.client(api.token(USER_B)) as client:
        listed = (await client.get("/functions/v1/characters")).json()["characters"]
    assert [(c["name"], c["shared"], c["mine"]) for c in listed] == [
        ("Josephine", True, False),
        ("Nelson", False, True),
    ]
    assert all("adapter_path" not in c for c in listed)
    async with api.client(api.keys.anon_key) as client:
        refused = await client.get("/functions/v1/characters")
    assert refused.status_code == 403
    async with api.client(api.keys.service_role_key) as client:
        everyone = (await client.get("/functions/v1/characters")).json()["characters"]
    assert {c["name"] for c in everyone} >= {"Napoleon", "Josephine", "Nelson"}
