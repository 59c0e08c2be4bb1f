"""A Supabase Realtime stand-in: the Phoenix channel protocol the official ``realtime`` client
speaks, at ``/realtime/v1/websocket``, relaying ``postgres_changes`` from the real Postgres.

What it speaks: ``phx_join`` with a ``postgres_changes`` config (answered with the server's
binding ids, then a ``system`` "Subscribed to PostgreSQL" message, or an error reply for a bad
join: an unknown table, an unsupported filter, a bad token), ``heartbeat``, ``access_token``,
``phx_leave``, and ``postgres_changes`` messages in Supabase's payload shape. Filters: the
``column=eq.value`` form. A subscriber's rows are read as its role would read them (a user
token through RLS; the service role sees everything; anon sees what anon may select).

How it sees changes: on start it adds a row trigger (local only, never in the migrations) to
each table of the ``supabase_realtime`` publication that NOTIFYs the table and the row's id;
the row is then read back. So an UPDATE relays the row as it is when read, and a change made
while no subscriber is connected is never delivered: at-most-once, as on Supabase.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog
from psycopg import sql
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from api.batches import act_as_user
from devstack.keys import LocalKeys
from dispatcher.wakeup import PostgresListener

log = structlog.get_logger("devstack.realtime")

CHANNEL = "devstack_realtime"
_CAPTURE = """
create schema if not exists devstack_realtime;
create or replace function devstack_realtime.capture() returns trigger
language plpgsql as $$
begin
  perform pg_notify('devstack_realtime', json_build_object(
    'schema', tg_table_schema, 'table', tg_table_name, 'type', tg_op,
    'id', case when tg_op = 'DELETE' then old.id else new.id end)::text);
  return null;
end
$$;
"""


@dataclass
class Binding:
    id: int
    event: str  # INSERT, UPDATE, DELETE or *
    schema: str
    table: str
    filter: str | None

    def matches(self, change: dict[str, Any], row: dict[str, Any] | None) -> bool:
        if (self.schema, self.table) != (change["schema"], change["table"]):
            return False
        if self.event not in ("*", change["type"]):
            return False
        if self.filter is None:
            return True
        column, _, value = self.filter.partition("=eq.")
        return row is not None and str(row.get(column)) == value


@dataclass(eq=False)
class Subscriber:
    socket: WebSocket
    topic: str
    role: str
    user_id: str | None
    bindings: list[Binding] = field(default_factory=list)


class RealtimeStandIn:
    def __init__(self, keys: LocalKeys) -> None:
        self.database_url = ""
        self.keys = keys
        self.subscribers: set[Subscriber] = set()
        self._ids = itertools.count(1)
        self._tables: dict[tuple[str, str], list[dict[str, str]]] = {}  # published table -> columns
        self._changes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.running = False  # stopped: sockets are closed and new ones refused, as while Realtime restarts

    def routes(self) -> list[WebSocketRoute]:
        return [WebSocketRoute("/realtime/v1/websocket", self._serve)]

    async def start(self, database_url: str) -> None:
        """Relay the changes of ``database_url`` (its published tables get the capture trigger)."""
        self.database_url = database_url
        self.listener = PostgresListener(
            database_url,
            {CHANNEL: self._on_change},
            on_connect=lambda: None,
            application_name="devstack-realtime",
        )
        async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
            await conn.execute(_CAPTURE)
            published = await (
                await conn.execute(
                    "select schemaname, tablename from pg_publication_tables"
                    " where pubname = 'supabase_realtime'"
                )
            ).fetchall()
            for schema, table in published:
                columns = await (
                    await conn.execute(
                        "select column_name, udt_name from information_schema.columns"
                        " where table_schema = %s and table_name = %s order by ordinal_position",
                        (schema, table),
                    )
                ).fetchall()
                self._tables[(schema, table)] = [{"name": name, "type": kind} for name, kind in columns]
                await conn.execute(
                    sql.SQL(
                        "create or replace trigger devstack_realtime_capture after insert or update or delete"
                        " on {} for each row execute function devstack_realtime.capture()"
                    ).format(sql.Identifier(schema, table))
                )
        self._tasks = [
            asyncio.create_task(self.listener.run(), name="realtime-listen"),
            asyncio.create_task(self._relay(), name="realtime-relay"),
        ]
        await self.listener.connected.wait()
        self.running = True

    async def stop(self) -> None:
        self.running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for subscriber in list(self.subscribers):
            with contextlib.suppress(Exception):
                await subscriber.socket.close(1001)
        self.subscribers.clear()
        self._changes = asyncio.Queue()

    # ---- the socket ----------------------------------------------------------------
    async def _serve(self, socket: WebSocket) -> None:
        if not self.running:
            await socket.close(code=1013, reason="realtime is restarting")
            return
        if self.keys.role_of(socket.query_params.get("apikey", "")) is None:
            await socket.close(code=4001, reason="invalid apikey")
            return
        await socket.accept()
        mine: dict[str, Subscriber] = {}
        try:
            while True:
                message = json.loads(await socket.receive_text())
                await self._handle(socket, message, mine)
        except WebSocketDisconnect:
            pass
        finally:
            self.subscribers.difference_update(mine.values())

    async def _handle(self, socket: WebSocket, message: dict[str, Any], mine: dict[str, Subscriber]) -> None:
        topic, event, ref = message.get("topic", ""), message.get("event"), message.get("ref")
        payload = message.get("payload") or {}
        if event == "heartbeat":
            await self._reply(socket, topic, ref, "ok", {})
        elif event == "phx_join":
            await self._join(socket, topic, ref, payload, mine)
        elif event == "phx_leave":
            if subscriber := mine.pop(topic, None):
                self.subscribers.discard(subscriber)
            await self._reply(socket, topic, ref, "ok", {})
        elif event == "access_token" and topic in mine:
            role_and_user = self._caller(payload.get("access_token"), mine[topic].role)
            if role_and_user is not None:
                mine[topic].role, mine[topic].user_id = role_and_user

    async def _join(
        self,
        socket: WebSocket,
        topic: str,
        ref: str | None,
        payload: dict[str, Any],
        mine: dict[str, Subscriber],
    ) -> None:
        apikey_role = self.keys.role_of(socket.query_params.get("apikey", "")) or "anon"
        caller = self._caller(payload.get("access_token"), apikey_role)
        if caller is None:
            await self._reply(socket, topic, ref, "error", {"reason": "invalid access token"})
            return
        subscriber = Subscriber(socket, topic, *caller)
        for wanted in payload.get("config", {}).get("postgres_changes") or []:
            schema, table = wanted.get("schema", "public"), wanted.get("table")
            problem = self._problem(schema, table, wanted.get("filter"))
            if problem:
                await self._reply(socket, topic, ref, "error", {"reason": problem})
                return
            subscriber.bindings.append(
                Binding(next(self._ids), wanted.get("event", "*"), schema, table, wanted.get("filter"))
            )
        mine[topic] = subscriber
        self.subscribers.add(subscriber)
        response = [
            {"id": b.id, "event": b.event, "schema": b.schema, "table": b.table, "filter": b.filter}
            for b in subscriber.bindings
        ]
        await self._reply(socket, topic, ref, "ok", {"postgres_changes": response})
        await socket.send_json(
            {
                "event": "system",
                "topic": topic,
                "ref": None,
                "payload": {
                    "channel": topic.removeprefix("realtime:"),
                    "extension": "postgres_changes",
                    "message": "Subscribed to PostgreSQL",
                    "status": "ok",
                },
            }
        )

    def _caller(self, token: str | None, default_role: str) -> tuple[str, str | None] | None:
        if not token:
            return default_role, None
        claims = self.keys.claims_of(token)
        role = claims.get("role") if claims else None
        if claims is None or not isinstance(role, str):
            return None
        return role, (str(claims["sub"]) if role == "authenticated" else None)

    def _problem(self, schema: str, table: str | None, row_filter: str | None) -> str | None:
        if table is None or (schema, table) not in self._tables:
            return f"{schema}.{table} is not in the supabase_realtime publication"
        if row_filter is not None:
            column, operator, _ = row_filter.partition("=eq.")
            names = {c["name"] for c in self._tables[(schema, table)]}
            if not operator or column not in names:
                return f"filter {row_filter!r}: the stand-in supports column=eq.value on a known column"
        return None

    @staticmethod
    async def _reply(
        socket: WebSocket, topic: str, ref: str | None, status: str, response: dict[str, Any]
    ) -> None:
        await socket.send_json(
            {
                "event": "phx_reply",
                "topic": topic,
                "ref": ref,
                "payload": {"status": status, "response": response},
            }
        )

    # ---- relaying changes ----------------------------------------------------------
    def _on_change(self, payload: str) -> None:
        self._changes.put_nowait(json.loads(payload))

    async def _relay(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
            while True:
                change = await self._changes.get()
                if not self.subscribers:
                    continue
                commit_timestamp = datetime.now(UTC).isoformat()
                for subscriber in list(self.subscribers):
                    row = await self._row_as(conn, subscriber, change)
                    ids = [b.id for b in subscriber.bindings if b.matches(change, row)]
                    if not ids or (row is None and change["type"] != "DELETE"):
                        continue
                    data = {
                        "schema": change["schema"],
                        "table": change["table"],
                        "commit_timestamp": commit_timestamp,
                        "type": change["type"],
                        "errors": None,
                        "columns": self._tables[(change["schema"], change["table"])],
                        "record": row if change["type"] != "DELETE" else {},
                        "old_record": {"id": change["id"]} if change["type"] != "INSERT" else {},
                    }
                    with contextlib.suppress(Exception):  # a socket that went away mid-send
                        await subscriber.socket.send_text(
                            json.dumps(
                                {
                                    "event": "postgres_changes",
                                    "topic": subscriber.topic,
                                    "ref": None,
                                    "payload": {"ids": ids, "data": data},
                                },
                                default=str,
                            )
                        )

    async def _row_as(
        self, conn: psycopg.AsyncConnection[Any], subscriber: Subscriber, change: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The changed row as the subscriber's role may read it (None: not visible, or gone)."""
        query = sql.SQL("select to_jsonb(t) from {} t where t.id = %s").format(
            sql.Identifier(change["schema"], change["table"])
        )
        try:
            async with conn.transaction():
                if subscriber.role == "authenticated" and subscriber.user_id:
                    await act_as_user(conn, subscriber.user_id)
                elif subscriber.role != "service_role":
                    await conn.execute("set local role anon")
                row = await (await conn.execute(query, (change["id"],))).fetchone()
        except psycopg.errors.InsufficientPrivilege:
            return None
        return row[0] if row else None
