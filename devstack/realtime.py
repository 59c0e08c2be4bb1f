"""A Supabase Realtime stand-in: the Phoenix channel protocol the official ``realtime`` client
speaks, at ``/realtime/v1/websocket``, relaying ``postgres_changes`` from the real Postgres.

What it speaks: Phoenix's two serializers, chosen by the ``vsn`` query parameter as the real
server chooses (``1.0.0``: JSON objects, the Python client's; ``2.0.0``: JSON arrays
``[join_ref, ref, topic, event, payload]``, supabase-js 2.x's; any other is refused with a close
reason), ``phx_join`` with a ``postgres_changes`` config (answered with the server's
binding ids, then a ``system`` "Subscribed to PostgreSQL" message, or an error reply for a bad
join: an unknown table, an unsupported filter, a bad token), ``heartbeat``, ``access_token``,
``phx_leave``, and ``postgres_changes`` messages in Supabase's payload shape. Filters: the
``column=eq.value`` form. A subscriber's rows are read as its role would read them (a user
token through RLS; the service role sees everything; anon sees what anon may select).

How it sees changes: on start it adds a row trigger (local only, never in the migrations) to
each table of the ``supabase_realtime`` publication that records the row as the change left it
(and the old row) with its transaction, and NOTIFYs the change's id. Each change carries that
row, ``old_record`` per the table's replica identity (the key alone unless REPLICA IDENTITY
FULL), and the commit's timestamp. A subscriber gets only changes committed after it joined,
only rows its role may read (RLS: the row is looked up as that role; DELETEs are not filtered,
as on Supabase) and only the columns its role may select. At-most-once, as on Supabase.
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
from psycopg.rows import dict_row
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from devstack.keys import LocalKeys
from kernel.db import act_as_user
from kernel.listen import PostgresListener

log = structlog.get_logger("devstack.realtime")

CHANNEL = "devstack_realtime"
SERIALIZERS = ("1.0.0", "2.0.0")
_CAPTURE = """
create schema if not exists devstack_realtime;
create table if not exists devstack_realtime.changes (
  id bigint generated always as identity primary key,
  schema_name text not null,
  table_name text not null,
  type text not null,
  record jsonb,
  old_record jsonb,
  xid xid8 not null default pg_current_xact_id()
);
-- security definer: it runs in the writer's transaction, as the writer's role
create or replace function devstack_realtime.capture() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  change_id bigint;
begin
  insert into devstack_realtime.changes (schema_name, table_name, type, record, old_record)
  values (tg_table_schema, tg_table_name, tg_op,
          case when tg_op <> 'DELETE' then to_jsonb(new) end,
          case when tg_op <> 'INSERT' then to_jsonb(old) end)
  returning id into change_id;
  perform pg_notify('devstack_realtime', change_id::text);
  return null;
end
$$;
"""
# The change with its commit's timestamp (track_commit_timestamp is on in the local cluster).
_CHANGE = """
delete from devstack_realtime.changes where id = %s
returning schema_name, table_name, type, record, old_record,
          pg_xact_commit_timestamp((xid::text::bigint %% 4294967296)::text::xid) as committed_at
"""


class Wire:
    """One socket and its serializer: Phoenix's 1.0.0 (objects) or 2.0.0 (arrays)."""

    def __init__(self, socket: WebSocket, vsn: str) -> None:
        self.socket = socket
        self.vsn = vsn

    def decode(self, text: str) -> dict[str, Any]:
        message = json.loads(text)
        if self.vsn == "2.0.0":
            if not isinstance(message, list) or len(message) != 5:
                raise ValueError("a 2.0.0 message is [join_ref, ref, topic, event, payload]")
            join_ref, ref, topic, event, payload = message
            return {"join_ref": join_ref, "ref": ref, "topic": topic, "event": event, "payload": payload}
        if not isinstance(message, dict):
            raise ValueError("a 1.0.0 message is a JSON object")
        return message

    async def send(
        self, topic: str, event: str, payload: Any, ref: str | None = None, join_ref: str | None = None
    ) -> None:
        if self.vsn == "2.0.0":
            frame: Any = [join_ref, ref, topic, event, payload]
        else:
            frame = {"topic": topic, "event": event, "payload": payload, "ref": ref}
            if join_ref is not None:
                frame["join_ref"] = join_ref
        await self.socket.send_text(json.dumps(frame, default=str))


@dataclass
class Binding:
    id: int
    event: str  # INSERT, UPDATE, DELETE or *
    schema: str
    table: str
    filter: str | None

    def listens_to(self, change: dict[str, Any]) -> bool:
        """Its table and event, whatever its filter."""
        return (self.schema, self.table) == (change["schema"], change["table"]) and self.event in (
            "*",
            change["type"],
        )

    def matches(self, change: dict[str, Any], row: dict[str, Any] | None) -> bool:
        if not self.listens_to(change):
            return False
        if self.filter is None:
            return True
        column, _, value = self.filter.partition("=eq.")
        return row is not None and str(row.get(column)) == value


@dataclass(eq=False)
class Subscriber:
    wire: Wire
    topic: str
    role: str
    user_id: str | None
    join_ref: str | None = None
    joined_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    bindings: list[Binding] = field(default_factory=list)


class RealtimeStandIn:
    def __init__(self, keys: LocalKeys) -> None:
        self.database_url = ""
        self.keys = keys
        self.subscribers: set[Subscriber] = set()
        self._ids = itertools.count(1)
        self._tables: dict[tuple[str, str], list[dict[str, str]]] = {}  # published table -> columns
        self._changes: asyncio.Queue[int] = asyncio.Queue()
        self._readable: dict[tuple[str, str, str], set[str]] = {}  # (role, schema, table) -> columns
        self._replica_full: dict[tuple[str, str], bool] = {}
        self._keys: dict[tuple[str, str], list[str]] = {}  # primary key columns
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
                identity = await (
                    await conn.execute(
                        "select c.relreplident = 'f',"
                        " array(select a.attname::text from pg_index i join pg_attribute a"
                        " on a.attrelid = i.indrelid and a.attnum = any(i.indkey)"
                        " where i.indrelid = c.oid and i.indisprimary)"
                        " from pg_class c where c.oid = %s::regclass",
                        (f"{schema}.{table}",),
                    )
                ).fetchone()
                assert identity is not None
                self._replica_full[(schema, table)], self._keys[(schema, table)] = identity
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
                await subscriber.wire.socket.close(1001)
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
        vsn = socket.query_params.get("vsn", "1.0.0")
        await socket.accept()
        if vsn not in SERIALIZERS:
            await socket.close(code=1008, reason=f"unsupported vsn {vsn!r}: use 1.0.0 or 2.0.0")
            return
        wire, mine = Wire(socket, vsn), dict[str, Subscriber]()
        try:
            while True:
                try:
                    message = wire.decode(await socket.receive_text())
                except ValueError as exc:
                    await socket.close(code=1007, reason=str(exc)[:120])
                    return
                await self._handle(wire, message, mine)
        except WebSocketDisconnect:
            pass
        finally:
            self.subscribers.difference_update(mine.values())

    async def _handle(self, wire: Wire, message: dict[str, Any], mine: dict[str, Subscriber]) -> None:
        topic, event, ref = message.get("topic", ""), message.get("event"), message.get("ref")
        join_ref, payload = message.get("join_ref"), message.get("payload") or {}
        if event == "heartbeat":
            await wire.send(topic, "phx_reply", {"status": "ok", "response": {}}, ref)
        elif event == "phx_join":
            await self._join(wire, topic, ref, join_ref, payload, mine)
        elif event == "phx_leave":
            if subscriber := mine.pop(topic, None):
                self.subscribers.discard(subscriber)
            await wire.send(topic, "phx_reply", {"status": "ok", "response": {}}, ref, join_ref)
        elif event == "access_token" and topic in mine:
            role_and_user = self._caller(payload.get("access_token"), mine[topic].role)
            if role_and_user is not None:
                mine[topic].role, mine[topic].user_id = role_and_user

    async def _join(
        self,
        wire: Wire,
        topic: str,
        ref: str | None,
        join_ref: str | None,
        payload: dict[str, Any],
        mine: dict[str, Subscriber],
    ) -> None:
        async def reply(status: str, response: dict[str, Any]) -> None:
            await wire.send(topic, "phx_reply", {"status": status, "response": response}, ref, join_ref)

        apikey_role = self.keys.role_of(wire.socket.query_params.get("apikey", "")) or "anon"
        caller = self._caller(payload.get("access_token"), apikey_role)
        if caller is None:
            await reply("error", {"reason": "invalid access token"})
            return
        subscriber = Subscriber(wire, topic, *caller, join_ref=join_ref)
        for wanted in payload.get("config", {}).get("postgres_changes") or []:
            schema, table = wanted.get("schema", "public"), wanted.get("table")
            problem = self._problem(schema, table, wanted.get("filter"))
            if problem:
                await reply("error", {"reason": problem})
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
        await reply("ok", {"postgres_changes": response})
        system = {
            "channel": topic.removeprefix("realtime:"),
            "extension": "postgres_changes",
            "message": "Subscribed to PostgreSQL",
            "status": "ok",
        }
        await wire.send(topic, "system", system, None, join_ref)

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

    # ---- relaying changes ----------------------------------------------------------
    def _on_change(self, payload: str) -> None:
        self._changes.put_nowait(int(payload))

    async def _relay(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
            while True:
                change_id = await self._changes.get()
                async with conn.cursor(row_factory=dict_row) as cursor:
                    change = await (await cursor.execute(_CHANGE, (change_id,))).fetchone()
                if change is None or not self.subscribers:
                    continue
                for subscriber in list(self.subscribers):
                    message = await self._message_for(conn, subscriber, change)
                    if message is not None:
                        with contextlib.suppress(Exception):  # a socket that went away mid-send
                            await subscriber.wire.send(
                                subscriber.topic, "postgres_changes", message, None, subscriber.join_ref
                            )

    async def _message_for(
        self, conn: psycopg.AsyncConnection[Any], subscriber: Subscriber, change: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The change as this subscriber may see it, or None."""
        table = (change["schema_name"], change["table_name"])
        if change["committed_at"] is None or change["committed_at"] < subscriber.joined_at:
            return None  # committed before it joined
        named = {"schema": table[0], "table": table[1], "type": change["type"]}
        listening = [b for b in subscriber.bindings if b.listens_to(named)]
        if not listening:  # before any query: most subscribers watch other tables
            return None
        record, old = change["record"], change["old_record"]
        if change["type"] != "DELETE" and not await self._visible(conn, subscriber, table, record):
            return None
        readable = await self._columns_readable(conn, subscriber.role, table)
        shown = {k: v for k, v in (record or {}).items() if k in readable}
        ids = [b.id for b in listening if b.matches(named, shown if record else None)]
        if not ids:
            return None
        if old is not None and not self._replica_full[table]:
            old = {key: old[key] for key in self._keys[table]}
        data = {
            "schema": table[0],
            "table": table[1],
            "commit_timestamp": change["committed_at"].isoformat().replace("+00:00", "Z"),
            "type": change["type"],
            "errors": None,
            "columns": [c for c in self._tables[table] if c["name"] in readable],
            "record": shown,
            "old_record": {k: v for k, v in (old or {}).items() if k in readable},
        }
        return {"ids": ids, "data": data}

    async def _visible(
        self,
        conn: psycopg.AsyncConnection[Any],
        subscriber: Subscriber,
        table: tuple[str, str],
        record: dict[str, Any],
    ) -> bool:
        """Whether the subscriber's role may read this row (RLS), looked up by its key as that role."""
        keys = self._keys[table]
        query = sql.SQL("select 1 from {} where {}").format(
            sql.Identifier(*table),
            sql.SQL(" and ").join(sql.SQL("{}::text = %s").format(sql.Identifier(k)) for k in keys),
        )
        try:
            async with conn.transaction():
                await self._become(conn, subscriber)
                row = await (await conn.execute(query, [str(record[k]) for k in keys])).fetchone()
        except psycopg.errors.InsufficientPrivilege:
            return False
        return row is not None

    async def _columns_readable(
        self, conn: psycopg.AsyncConnection[Any], role: str, table: tuple[str, str]
    ) -> set[str]:
        """The columns ``role`` may select (its column grants, or the table's)."""
        key = (role, *table)
        if key not in self._readable:
            db_role = role if role in ("anon", "authenticated", "service_role") else "anon"
            rows = await (
                await conn.execute(
                    "select c.name from unnest(%s::text[]) as c(name)"
                    " where has_column_privilege(%s, %s::regclass, c.name, 'SELECT')",
                    ([c["name"] for c in self._tables[table]], db_role, ".".join(table)),
                )
            ).fetchall()
            self._readable[key] = {row[0] for row in rows}
        return self._readable[key]

    @staticmethod
    async def _become(conn: psycopg.AsyncConnection[Any], subscriber: Subscriber) -> None:
        if subscriber.role == "authenticated" and subscriber.user_id:
            await act_as_user(conn, subscriber.user_id)
        elif subscriber.role == "service_role":
            await conn.execute("set local role service_role")
        else:
            await conn.execute("set local role anon")
