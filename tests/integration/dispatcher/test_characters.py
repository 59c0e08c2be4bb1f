"""Characters through the dispatcher: registered with `zimage characters`' own code, named by a
batch, signed for at each submission, and refused or failed for good with a reason when the
adapter cannot be used; seeded reuse tells characters and weights apart."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from tests.integration.dispatcher.conftest import (
    USER_A,
    USER_B,
    Cloud,
    DispatcherFactory,
    insert_batch,
    jobs_of,
    wait_for_batch,
)
from zimage.characters import CharacterSettings, NewCharacter, add_character, remove_character

SCENE = "crossing the Alps"


def adapter_file(path: Path, fill: bytes) -> Path:
    """A well-formed safetensors file with one LoRA tensor (the synthetic workers check its hash,
    not its weights; the real worker's tests load real ones)."""
    tensor = {"dtype": "F32", "shape": [1, 4], "data_offsets": [0, 16]}
    header = json.dumps({"transformer.layers.0.attention.to_q.lora_A.weight": tensor}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + fill * 16)
    return path


@pytest.fixture
def registry(database_url: str, cloud: Cloud) -> CharacterSettings:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for user in (USER_A, USER_B):
            conn.execute("insert into auth.users (id) values (%s) on conflict do nothing", (user,))
    return CharacterSettings.model_validate(
        {
            "database_url": database_url,
            "supabase_url": cloud.storage_server.url,
            "supabase_service_role_key": cloud.keys.service_role_key,
        }
    )


async def add(registry: CharacterSettings, tmp_path: Path, name: str, owner: str = USER_A, **kw: Any) -> UUID:
    """As `zimage characters add` does it: its sync clients run off the loop the stand-ins serve on."""
    new = NewCharacter(owner, name, adapter_file(tmp_path / f"{name}.safetensors", name[:1].encode()), **kw)
    row = await asyncio.to_thread(add_character, registry, new)
    return UUID(str(row["id"]))


def submitted_inputs(cloud: Cloud) -> list[dict[str, Any]]:
    return [job.input for job in cloud.platform.jobs.values()]


async def test_a_character_batch_sends_each_job_its_adapter_and_weight(
    database_url: str,
    cloud: Cloud,
    dispatcher: DispatcherFactory,
    registry: CharacterSettings,
    tmp_path: Path,
) -> None:
    napoleon = await add(registry, tmp_path, "Napoleon", trigger_phrase="napoleon_zit", default_weight=0.8)
    josephine = await add(registry, tmp_path, "Josephine", shared=True)
    cloud.add_workers(count=2)
    async with dispatcher():
        batch = await insert_batch(
            database_url,
            [SCENE, "at Malmaison", "a map of Europe"],
            seed=1800,
            character_id=str(napoleon),
            prompt_characters=psycopg.types.json.Jsonb([None, {"id": str(josephine), "weight": 1.5}, None]),
        )
        complete = await wait_for_batch(database_url, batch)
    assert complete["failed"] == 0
    jobs = await jobs_of(database_url, batch)
    assert [job["prompt"] for job in jobs] == [
        f"napoleon_zit, {SCENE}",
        "at Malmaison",
        "napoleon_zit, a map of Europe",
    ]
    sent = {job_input["prompt"]: job_input["lora"] for job_input in submitted_inputs(cloud)}
    stored = {
        path.name: path.read_bytes()
        for path in (cloud.storage.root / "character-adapters").rglob("*.safetensors")
    }
    for lora in sent.values():
        assert "/object/sign/character-adapters/" in lora["url"], "a signed URL of the private bucket"
        assert any(hashlib.sha256(data).hexdigest() == lora["sha256"] for data in stored.values())
    assert sent[f"napoleon_zit, {SCENE}"]["weight"] == pytest.approx(0.8)
    assert sent["at Malmaison"]["weight"] == pytest.approx(1.5)
    assert {job["character_id"] for job in jobs} == {napoleon, josephine}


async def test_seeded_reuse_counts_the_character_and_its_weight(
    database_url: str,
    cloud: Cloud,
    dispatcher: DispatcherFactory,
    registry: CharacterSettings,
    tmp_path: Path,
) -> None:
    napoleon = await add(registry, tmp_path, "Napoleon")
    cloud.add_workers(count=2)
    async with dispatcher():
        plain = await insert_batch(database_url, [SCENE], seed=7)
        await wait_for_batch(database_url, plain)
        with_character = await insert_batch(database_url, [SCENE], seed=7, character_id=str(napoleon))
        await wait_for_batch(database_url, with_character)
        other_weight = await insert_batch(
            database_url, [SCENE], seed=7, character_id=str(napoleon), character_weight=0.5
        )
        await wait_for_batch(database_url, other_weight)
        again = await insert_batch(database_url, [SCENE], seed=7, character_id=str(napoleon))
        await wait_for_batch(database_url, again)
    (first,), (second,), (third,), (fourth,) = [
        await jobs_of(database_url, b) for b in (plain, with_character, other_weight, again)
    ]
    assert (second["reused_from"], third["reused_from"]) == (None, None)
    assert fourth["reused_from"] == second["id"]
    images = cloud.storage.root / "generated-assets"
    assert (images / first["storage_path"]).read_bytes() != (images / second["storage_path"]).read_bytes()
    assert len(cloud.platform.jobs) == 3


async def test_a_removed_adapter_fails_the_job_for_good_before_any_gpu_time(
    database_url: str,
    cloud: Cloud,
    dispatcher: DispatcherFactory,
    registry: CharacterSettings,
    tmp_path: Path,
) -> None:
    napoleon = await add(registry, tmp_path, "Napoleon")
    batch = await insert_batch(database_url, [SCENE], character_id=str(napoleon))
    await asyncio.to_thread(
        remove_character, registry, napoleon
    )  # after the insert: the job kept the adapter's key
    cloud.add_workers(count=1)
    async with dispatcher():
        complete = await wait_for_batch(database_url, batch)
    (job,) = await jobs_of(database_url, batch)
    assert complete["failed"] == 1
    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert "the character's adapter" in job["error"]
    assert "is not stored" in job["error"]
    assert cloud.platform.jobs == {}, "nothing reached RunPod"


async def test_an_adapter_whose_bytes_changed_fails_for_good_after_one_run(
    database_url: str,
    cloud: Cloud,
    dispatcher: DispatcherFactory,
    registry: CharacterSettings,
    tmp_path: Path,
) -> None:
    napoleon = await add(registry, tmp_path, "Napoleon")
    with psycopg.connect(database_url) as conn:
        (path,) = (
            conn.execute("select adapter_path from characters where id = %s", (napoleon,)).fetchone() or ()
        )
    (cloud.storage.root / "character-adapters" / path).write_bytes(b"tampered")
    cloud.add_workers(count=1)
    async with dispatcher():
        batch = await insert_batch(database_url, [SCENE], character_id=str(napoleon))
        await wait_for_batch(database_url, batch)
    (job,) = await jobs_of(database_url, batch)
    assert job["status"] == "failed"
    assert "do not match its hash" in job["error"]
    assert len(cloud.platform.jobs) == 1, "a permanent failure is not retried"


async def test_user_b_cannot_use_user_as_private_character_by_a_direct_insert(
    database_url: str, registry: CharacterSettings, tmp_path: Path
) -> None:
    napoleon = await add(registry, tmp_path, "Napoleon")
    josephine = await add(registry, tmp_path, "Josephine", shared=True)
    with pytest.raises(
        psycopg.errors.CheckViolation, match=f"character_id: no character {napoleon} that you may use"
    ):
        await insert_batch(database_url, [SCENE], user_id=USER_B, character_id=str(napoleon))
    assert await insert_batch(database_url, [SCENE], user_id=USER_B, character_id=str(josephine))
