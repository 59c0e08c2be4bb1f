"""The Realtime stand-in as supabase-js 2.x meets it: Phoenix's 2.0.0 serializer (JSON arrays),
chosen by ``vsn`` like the real server, an unknown one refused; and what a change carries: the
row as the change left it, the old row per replica identity, the commit's time, only the
columns the subscriber may select, and nothing committed before it joined."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import psycopg
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from devstack.frontend import insert_batch_as_user
from devstack.keys import LocalKeys
from tests.integration.devstack.conftest import REALTIME_USER_A, REALTIME_USER_B

USER_A, USER_B = REALTIME_USER_A, REALTIME_USER_B


def websocket_url(realtime_url: str) -> str:
    return realtime_url.replace("http://", "ws://") + "/websocket"


async def join_v2(
    url: str, keys: LocalKeys, table: str, token: str | None = None, event: str = "*"
) -> ClientConnection:
    """Join as realtime-js 2.x does: vsn=2.0.0, [join_ref, ref, topic, event, payload] frames."""
    socket = await connect(f"{websocket_url(url)}?apikey={keys.anon_key}&vsn=2.0.0")
    config = {"postgres_changes": [{"event": event, "schema": "public", "table": table}], "private": False}
    payload: dict[str, Any] = {"config": config}
    if token:
        payload["access_token"] = token
    await socket.send(json.dumps(["1", "1", "realtime:watch", "phx_join", payload]))
    reply = json.loads(await asyncio.wait_for(socket.recv(), 5))
    assert reply[:4] == ["1", "1", "realtime:watch", "phx_reply"]
    assert reply[4]["status"] == "ok", reply
    system = json.loads(await asyncio.wait_for(socket.recv(), 5))
    assert system[2:4] == ["realtime:watch", "system"]
    return socket


async def changes(socket: ClientConnection, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while len(found) < count:
        frame = json.loads(await asyncio.wait_for(socket.recv(), 5))
        if frame[3] == "postgres_changes":
            found.append(frame[4]["data"])
    return found


async def test_the_2_0_0_serializer_joins_heartbeats_and_relays(
    realtime: tuple[str, LocalKeys], database_url: str
) -> None:
    url, keys = realtime
    socket = await join_v2(url, keys, "image_batches", keys.user_token(USER_A))
    try:
        await socket.send(json.dumps([None, "2", "phoenix", "heartbeat", {}]))
        assert json.loads(await asyncio.wait_for(socket.recv(), 5)) == [
            None,
            "2",
            "phoenix",
            "phx_reply",
            {"status": "ok", "response": {}},
        ]
        batch_id = await insert_batch_as_user(database_url, USER_A, ["Hagia Sophia"])
        (change,) = await changes(socket, 1)
    finally:
        await socket.close()
    assert (change["type"], change["record"]["id"]) == ("INSERT", str(batch_id))


@pytest.mark.parametrize("vsn", ["3.0.0", "garbage"])
async def test_an_unknown_serializer_is_refused_with_a_reason(
    realtime: tuple[str, LocalKeys], vsn: str
) -> None:
    url, keys = realtime
    async with connect(f"{websocket_url(url)}?apikey={keys.anon_key}&vsn={vsn}") as socket:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None
    assert f"unsupported vsn {vsn!r}" in closed.value.rcvd.reason


async def test_a_change_carries_the_row_as_it_left_it_and_only_readable_columns(
    realtime: tuple[str, LocalKeys], database_url: str
) -> None:
    url, keys = realtime
    socket = await join_v2(url, keys, "image_jobs", keys.user_token(USER_A))
    try:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            async with conn.transaction():  # inserted and claimed in one transaction: read back, the
                row = await (  # INSERT would show the claimed row
                    await conn.execute(
                        "insert into image_batches (user_id, prompts) values (%s, array['The Colosseum'])"
                        " returning id",
                        (USER_A,),
                    )
                ).fetchone()
                assert row is not None
                batch_id = row[0]
                await conn.execute(
                    "update image_jobs set status = 'submitted', lease_owner = 'd1', runpod_job_id = 'rp-1'"
                    " where batch_id = %s",
                    (batch_id,),
                )
            before = datetime.now().astimezone()
            inserted, updated = await changes(socket, 2)
    finally:
        await socket.close()
    assert (inserted["type"], inserted["record"]["status"]) == ("INSERT", "queued")
    assert (updated["type"], updated["record"]["status"]) == ("UPDATE", "submitted")
    assert updated["old_record"] == {"id": updated["record"]["id"]}, "the key alone: no REPLICA IDENTITY FULL"
    for change in (inserted, updated):
        assert not {"lease_owner", "runpod_job_id", "status_polls", "image_sha256"} & set(change["record"])
        assert "lease_owner" not in {column["name"] for column in change["columns"]}
        assert datetime.fromisoformat(change["commit_timestamp"]) <= before


async def test_no_change_committed_before_the_join_and_no_other_users_rows(
    realtime: tuple[str, LocalKeys], database_url: str
) -> None:
    url, keys = realtime
    await insert_batch_as_user(database_url, USER_A, ["before the join"])
    socket = await join_v2(url, keys, "image_batches", keys.user_token(USER_A), event="INSERT")
    try:
        await insert_batch_as_user(database_url, USER_B, ["B's"])
        mine = await insert_batch_as_user(database_url, USER_A, ["after the join"])
        (change,) = await changes(socket, 1)
        with pytest.raises(TimeoutError):  # nothing else: not B's, not the one before the join
            await asyncio.wait_for(socket.recv(), 0.5)
    finally:
        await socket.close()
    assert change["record"]["id"] == str(mine)
