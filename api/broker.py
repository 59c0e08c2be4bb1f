"""One LISTEN connection fans a batch's progress events out to every subscriber in the process.

Events live in image_job_events; each visible one has a per-batch ``seq`` that is
gapless and in commit order (migration 20261124000600), so "everything after seq
N" is an exact resume point. The broker keeps, per followed batch, the events
read so far; a NOTIFY names the batch, and one query (over one connection, for
every batch that changed) appends the new ones and wakes that batch's
subscribers. A thousand browsers on one batch cost two database connections and
one query per change, and a late subscriber replays from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any
from uuid import UUID

import psycopg
import structlog
from psycopg.rows import dict_row

from api.auth import Caller
from api.estimates import estimate_event, estimation_inputs
from api.queries import QUERIES
from kernel.listen import PostgresListener
from kernel.logs import first_line

log = structlog.get_logger("api.broker")

ACTIVE_STATES = ("queued", "submitted", "running")
APPLICATION_NAME = "zimage-events"  # both fan-out connections, as pg_stat_activity shows them


@dataclass(frozen=True)
class StreamEvent:
    batch_id: UUID
    seq: int
    kind: str
    payload: dict[str, Any]

    def data(self) -> dict[str, Any]:
        """The SSE data: one JSON object with its ``type`` (what the old edge function's client reads)."""
        return {"type": self.kind, "batch_id": str(self.batch_id), **self.payload}

    @cached_property
    def data_line(self) -> bytes:
        """Encoded once, however many subscribers receive it."""
        return data_line(self.data())


def data_line(data: dict[str, Any]) -> bytes:
    """An SSE ``data:`` line: one line of compact JSON (JSON escapes any newline inside)."""
    return b"data: " + json.dumps(data, separators=(",", ":"), default=str).encode() + b"\n"


@dataclass(eq=False)
class BatchLog:
    batch_id: UUID
    owner: UUID | None
    events: list[StreamEvent] = field(default_factory=list)  # events[i].seq == i + 1
    subscribers: set[Subscription] = field(default_factory=set)
    # The latest estimate of its unfinished jobs (not stored: no seq, no id), what it changes
    # with, and how many have been made; each subscriber gets the latest once.
    estimate: StreamEvent | None = None
    estimate_shape: object = None
    estimates: int = 0

    def estimated(self, event: StreamEvent, shape: object) -> None:
        if shape == self.estimate_shape:
            return
        self.estimate, self.estimate_shape = event, shape
        self.estimates += 1
        for subscriber in self.subscribers:
            subscriber.wake.set()

    @property
    def last_seq(self) -> int:
        return len(self.events)

    @property
    def finished(self) -> bool:
        """Complete, and not requeued since."""
        for event in reversed(self.events):
            if event.kind in ("complete", "requeued"):
                return event.kind == "complete"
        return False

    def append(self, events: Iterable[StreamEvent]) -> None:
        for event in events:
            if event.seq == self.last_seq + 1:
                self.events.append(event)
                self.estimate = None  # it predates this event: the next round makes a fresh one
        for subscriber in self.subscribers:
            subscriber.wake.set()


class BatchNotFound(Exception):
    """No such batch."""


class BatchForbidden(Exception):
    """The batch is someone else's."""


class Subscription:
    """A stream's view: the batches it follows and how far it has read each.

    With ``feed`` it follows every batch its caller may see that is active or
    becomes active while it is open; otherwise the listed batches, and it ends
    once each of them is complete.
    """

    def __init__(self, caller: Caller, cursors: dict[UUID, int], feed: bool) -> None:
        self.caller = caller
        self.cursors = dict(cursors)
        self.feed = feed
        self.logs: list[BatchLog] = []
        self.wake = asyncio.Event()
        self.closed = False
        self.estimates_seen: dict[UUID, int] = {}

    def follow(self, batch: BatchLog) -> None:
        if batch not in self.logs:
            self.logs.append(batch)
            batch.subscribers.add(self)
            self.wake.set()

    @property
    def caught_up_and_finished(self) -> bool:
        return not self.feed and all(
            b.finished and self.cursors.get(b.batch_id, 0) >= b.last_seq for b in self.logs
        )

    async def pending(self) -> AsyncIterator[list[tuple[StreamEvent, str | None]]]:
        """Everything new since the last read, each event with the cursor token just after it (an
        estimate has none: a reconnect resumes after the last stored event); the events of one
        wake come together (one write per subscriber, not one per event)."""
        while not self.closed:
            self.wake.clear()  # before reading: a wake during the read is not lost
            new: list[tuple[StreamEvent, str | None]] = []
            for batch in list(self.logs):
                cursor = self.cursors.get(batch.batch_id, 0)
                for event in batch.events[cursor:]:
                    self.cursors[batch.batch_id] = event.seq
                    new.append((event, self.cursor_token()))
                seen = self.estimates_seen.get(batch.batch_id, 0)
                if batch.estimate is not None and batch.estimates > seen and not batch.finished:
                    self.estimates_seen[batch.batch_id] = batch.estimates
                    new.append((batch.estimate, None))
            if new:
                yield new
            if self.caught_up_and_finished:
                return
            await self.wake.wait()

    async def events(self) -> AsyncIterator[StreamEvent]:
        async for new in self.pending():
            for event, _ in new:
                yield event

    def cursor_token(self) -> str:
        """The SSE ``id``: the seq for a one-batch stream, else ``batch:seq`` per batch (a feed
        leaves out the batches it has seen complete: a reconnect need not hear of them again)."""
        if not self.feed and len(self.logs) == 1:
            return str(self.cursors.get(self.logs[0].batch_id, 0))
        return ",".join(
            f"{b.batch_id}:{self.cursors[b.batch_id]}"
            for b in self.logs
            if self.cursors.get(b.batch_id)
            and not (self.feed and b.finished and self.cursors[b.batch_id] >= b.last_seq)
        )


def parse_cursor(token: str | None, batch_ids: list[UUID]) -> dict[UUID, int]:
    """Inverse of Subscription.cursor_token; raises ValueError on anything else."""
    if not token:
        return {}
    if token.isdigit():
        if len(batch_ids) != 1:
            raise ValueError("Last-Event-ID is a one-batch position but this stream follows several")
        return {batch_ids[0]: int(token)}
    cursors: dict[UUID, int] = {}
    for part in token.split(","):
        batch, _, seq = part.rpartition(":")
        if not seq.isdigit():
            raise ValueError(f"{part!r}: not batch:position")
        cursors[UUID(batch)] = int(seq)
    return cursors


class EventBroker:
    def __init__(self, database_url: str, estimate_interval_s: float = 5.0) -> None:
        self.database_url = database_url
        self.estimate_interval_s = estimate_interval_s
        self.logs: dict[UUID, BatchLog] = {}
        self.feeds: set[Subscription] = set()
        self._dirty: set[UUID] = set()
        self._dirty_event = asyncio.Event()
        self._conn: psycopg.AsyncConnection[dict[str, Any]] | None = None
        self._lock = asyncio.Lock()
        self.listener = PostgresListener(
            database_url,
            {"image_job_events": self._on_notify},
            on_connect=self._on_reconnect,
            application_name=APPLICATION_NAME,
        )

    def subscriptions(self) -> set[Subscription]:
        return {s for b in self.logs.values() for s in b.subscribers} | self.feeds

    def close(self) -> None:
        """End every open stream (each gets an event saying the server is going away)."""
        for subscriber in self.subscriptions():
            subscriber.closed = True
            subscriber.wake.set()

    async def run(self) -> None:
        """LISTEN and refresh until cancelled; then every open stream ends."""
        try:
            await asyncio.gather(self.listener.run(), self._refresh_loop(), self._estimate_loop())
        finally:
            self.close()
            if self._conn is not None:
                await self._conn.close()

    # ---- subscribing ----------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def subscribe(
        self, caller: Caller, batch_ids: list[UUID] | None, cursors: dict[UUID, int], trusted: bool = False
    ) -> AsyncIterator[Subscription]:
        """Follow ``batch_ids`` (or, with None, every batch the caller may see): BatchNotFound or
        BatchForbidden for one that does not exist or is someone else's."""
        subscription = Subscription(caller, cursors, feed=batch_ids is None)
        opened: list[BatchLog] = []
        try:
            if batch_ids is None:
                self.feeds.add(subscription)
                active = await self._active_batches(caller)
                opened = await self._open([*active, *(b for b in cursors if b not in active)])
            else:
                opened = await self._open(batch_ids)
                if len(opened) != len(set(batch_ids)):
                    raise BatchNotFound(next(b for b in batch_ids if b not in {o.batch_id for o in opened}))
            for batch in opened:
                if trusted or caller.may_see(batch.owner):
                    subscription.follow(batch)
                elif batch_ids is not None:
                    raise BatchForbidden(batch.batch_id)
            yield subscription
        finally:
            subscription.closed = True
            self.feeds.discard(subscription)
            for batch in {*opened, *subscription.logs}:
                batch.subscribers.discard(subscription)
                if not batch.subscribers and self.logs.get(batch.batch_id) is batch:
                    del self.logs[batch.batch_id]

    async def _open(self, batch_ids: list[UUID]) -> list[BatchLog]:
        """The logs of these batches that exist, in the given order, loading the ones not yet followed."""
        found = {b: self.logs[b] for b in batch_ids if b in self.logs}
        missing = [b for b in batch_ids if b not in found]
        if missing:
            rows = await self._query("batch_owners", {"batch_ids": missing})
            for row in rows:
                # Registered before its events are read: a NOTIFY from now on marks it dirty.
                found[row["id"]] = self.logs.setdefault(row["id"], BatchLog(row["id"], row["user_id"]))
            await self._fetch([found[b] for b in missing if b in found])
        return [found[b] for b in dict.fromkeys(batch_ids) if b in found]

    async def _active_batches(self, caller: Caller) -> list[UUID]:
        rows = await self._query(
            "active_batches",
            {"states": list(ACTIVE_STATES), "is_admin": caller.is_admin, "user_id": caller.user_id},
        )
        return [row["batch_id"] for row in rows]

    # ---- following changes ------------------------------------------------------------
    def _on_notify(self, payload: str) -> None:
        try:
            batch_id = UUID(json.loads(payload)["batch_id"])
        except (ValueError, KeyError, TypeError):
            return
        if batch_id in self.logs or self.feeds:
            self._dirty.add(batch_id)
            self._dirty_event.set()

    def _on_reconnect(self) -> None:
        """Notifications sent while the listener was away are gone: re-read every followed batch."""
        self._dirty.update(self.logs)
        self._dirty_event.set()

    async def _refresh_loop(self) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            dirty, self._dirty = self._dirty, set()
            try:
                await self._adopt_new_batches([b for b in dirty if b not in self.logs])
                await self._fetch([self.logs[b] for b in dirty if b in self.logs])
            except psycopg.OperationalError as exc:
                log.warning("broker.refresh_failed", error=first_line(exc))
                self._dirty |= dirty
                await asyncio.sleep(0.5)
                self._dirty_event.set()

    async def _estimate_loop(self) -> None:
        """Every few seconds, one estimate for all the followed batches that are not finished:
        one query for their jobs, one for the capacity, one for the execution times."""
        while True:
            await asyncio.sleep(self.estimate_interval_s)
            batches = [b for b in self.logs.values() if b.subscribers and not b.finished]
            if not batches:
                continue
            try:
                await self._estimate(batches)
            except psycopg.OperationalError as exc:
                log.warning("broker.estimate_failed", error=first_line(exc))

    async def _estimate(self, batches: list[BatchLog]) -> None:
        jobs = await self._query("unfinished_jobs", {"batch_ids": [b.batch_id for b in batches]})
        if not jobs:
            return
        capacity, times = await estimation_inputs(self._query, jobs)
        now = datetime.now(UTC)
        by_batch: dict[UUID, list[dict[str, Any]]] = {}
        for job in jobs:
            by_batch.setdefault(job["batch_id"], []).append(job)
        for batch in batches:
            if (mine := by_batch.get(batch.batch_id)) is not None:
                payload, shape = estimate_event(mine, capacity, times, now)
                batch.estimated(StreamEvent(batch.batch_id, 0, "estimate", payload), shape)

    async def _adopt_new_batches(self, batch_ids: list[UUID]) -> None:
        """A batch nobody follows yet changed: feeds whose caller may see it start following it."""
        if not batch_ids or not self.feeds:
            return
        adopted: list[tuple[BatchLog, list[Subscription]]] = []
        for row in await self._query("batch_owners", {"batch_ids": batch_ids}):
            followers = [s for s in self.feeds if s.caller.may_see(row["user_id"])]
            if followers:
                adopted.append(
                    (self.logs.setdefault(row["id"], BatchLog(row["id"], row["user_id"])), followers)
                )
        await self._fetch([batch for batch, _ in adopted])  # one query for all of them
        for batch, followers in adopted:
            for subscriber in followers:
                subscriber.follow(batch)

    async def _fetch(self, batches: list[BatchLog]) -> None:
        """Append every batch's events after what it holds: one query for all of them."""
        if not batches:
            return
        rows = await self._query(
            "events_after",
            {"batch_ids": [b.batch_id for b in batches], "after_seqs": [b.last_seq for b in batches]},
        )
        by_id = {b.batch_id: b for b in batches}
        grouped: dict[UUID, list[StreamEvent]] = {}
        for row in rows:
            grouped.setdefault(row["batch_id"], []).append(
                StreamEvent(row["batch_id"], row["seq"], row["kind"], row["payload"])
            )
        for batch_id, events in grouped.items():
            by_id[batch_id].append(events)

    async def _query(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The named query, on the broker's one query connection (reopened after Postgres drops it)."""
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.database_url,
                    autocommit=True,
                    row_factory=dict_row,
                    application_name=APPLICATION_NAME,
                )
            try:
                cursor = await self._conn.execute(QUERIES[name], params)
                return await cursor.fetchall()
            except psycopg.OperationalError:
                await self._conn.close()
                raise
