"""The Realtime stand-in, driven by the official ``realtime`` client unchanged: joins, heartbeats,
postgres_changes in Supabase's shape, RLS for user tokens, and errors on a bad join."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from realtime import AsyncRealtimeClient, RealtimePostgresChangesListenEvent, RealtimeSubscribeStates

from devstack.frontend import insert_batch_as_user
from devstack.keys import LocalKeys
from tests.integration.devstack.conftest import REALTIME_USER_A, REALTIME_USER_B

USER_A, USER_B = REALTIME_USER_A, REALTIME_USER_B


async def subscribe(
    url: str, apikey: str, table: str, token: str | None = None, row_filter: str | None = None
) -> tuple[AsyncRealtimeClient, asyncio.Queue[Any], list[RealtimeSubscribeStates]]:
    client = AsyncRealtimeClient(url, apikey, auto_reconnect=False)
    if token:
        await client.set_auth(token)
    received: asyncio.Queue[Any] = asyncio.Queue()
    states: list[RealtimeSubscribeStates] = []
    channel = client.channel(f"watch-{table}")
    channel.on_postgres_changes(
        RealtimePostgresChangesListenEvent.Insert,
        received.put_nowait,
        table=table,
        schema="public",
        filter=row_filter,
    )
    await channel.subscribe(lambda state, error: states.append(state))
    return client, received, states


async def test_inserts_reach_the_official_client_in_supabases_shape(
    realtime: tuple[str, LocalKeys], database_url: str
) -> None:
    url, keys = realtime
    client, received, states = await subscribe(url, keys.service_role_key, "image_jobs")
    try:
        assert states == [RealtimeSubscribeStates.SUBSCRIBED]
        batch_id = await insert_batch_as_user(database_url, USER_A, ["The Parthenon", "Delphi"])
        changes = [await asyncio.wait_for(received.get(), 5) for _ in range(2)]
    finally:
        await client.close()
    data = changes[0]["data"]
    assert data["type"] == "INSERT"
    assert (data["schema"], data["table"]) == ("public", "image_jobs")
    assert {column["name"] for column in data["columns"]} >= {"id", "status", "prompt"}
    assert sorted(c["data"]["record"]["prompt"] for c in changes) == ["Delphi", "The Parthenon"]
    assert {c["data"]["record"]["batch_id"] for c in changes} == {str(batch_id)}
    assert changes[0]["ids"]


async def test_a_user_token_receives_only_rows_rls_lets_it_read(
    realtime: tuple[str, LocalKeys], database_url: str
) -> None:
    url, keys = realtime
    client, received, _ = await subscribe(url, keys.anon_key, "image_batches", token=keys.user_token(USER_B))
    try:
        await insert_batch_as_user(database_url, USER_A, ["Not B's"])
        mine = await insert_batch_as_user(database_url, USER_B, ["B's own"])
        change = await asyncio.wait_for(received.get(), 5)
        await asyncio.sleep(0.2)
        assert received.empty()
    finally:
        await client.close()
    assert change["data"]["record"]["id"] == str(mine)


async def test_filters_narrow_what_is_sent(realtime: tuple[str, LocalKeys], database_url: str) -> None:
    url, keys = realtime
    client, received, _ = await subscribe(
        url, keys.service_role_key, "image_batches", row_filter=f"user_id=eq.{USER_B}"
    )
    try:
        await insert_batch_as_user(database_url, USER_A, ["A"])
        wanted = await insert_batch_as_user(database_url, USER_B, ["B"])
        change = await asyncio.wait_for(received.get(), 5)
    finally:
        await client.close()
    assert change["data"]["record"]["id"] == str(wanted)


@pytest.mark.parametrize(
    ("table", "row_filter"),
    [("auth_secrets", None), ("image_jobs", "status=like.q%"), ("image_jobs", "nope=eq.1")],
)
async def test_a_bad_join_is_refused(
    realtime: tuple[str, LocalKeys], table: str, row_filter: str | None
) -> None:
    url, keys = realtime
    client, _, states = await subscribe(url, keys.service_role_key, table, row_filter=row_filter)
    await client.close()
    assert states == [RealtimeSubscribeStates.CHANNEL_ERROR]
