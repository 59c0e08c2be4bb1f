"""The job store adapter: image_jobs in Postgres through a psycopg 3 connection pool.

Every method is one guarded statement (or one call of a state-machine function) from
sql/queries.sql: it changes a row only if this dispatcher holds its lease and the row is in the
expected state, and says whether it did. Every driver error leaves as StoreUnavailable, so the
core never sees psycopg.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import fields
from typing import Any, Generic, TypeVar
from uuid import UUID

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from dispatcher.domain import (
    NOBODY,
    ClaimedJob,
    JobStatus,
    ReusableImage,
    StoreUnavailable,
    Success,
    WebhookDelivery,
)
from dispatcher.queries import QUERIES
from kernel.logs import first_line

T = TypeVar("T")
R = TypeVar("R")


class PostgresJobStore:
    def __init__(self, pool: AsyncConnectionPool, owner: str, lease_s: float) -> None:
        self.pool = pool
        self.owner = owner
        self.lease_s = lease_s
        self._submissions = Coalescer(self._mark_submitted)
        self._successes = Coalescer(self._succeed_many)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; any driver error (or a pool that cannot give one) becomes
        StoreUnavailable, with the driver's headline."""
        try:
            async with self.pool.connection() as conn:
                yield conn
        except psycopg.Error as error:
            raise StoreUnavailable(first_line(error)) from error

    async def claim(self, limit: int, per_user: int) -> list[ClaimedJob]:
        params = {
            "owner": self.owner,
            "lease_s": self.lease_s,
            "limit": limit,
            "per_user": per_user,
            "scan": max(limit * 4, 64),
            "nobody": NOBODY,
        }
        async with self._connection() as conn, conn.cursor(row_factory=class_row(ClaimedJob)) as cursor:
            await cursor.execute(QUERIES["claim"], params)
            return await cursor.fetchall()

    async def mark_submitted(self, job_id: UUID, runpod_job_id: str, endpoint_id: str) -> bool:
        """Record the RunPod job id; False if the row is no longer ours. Calls made in the same
        moment share one statement: under load, submissions come back together."""
        return job_id in await self._submissions.add((job_id, runpod_job_id, endpoint_id))

    async def _mark_submitted(self, submissions: list[tuple[UUID, str, str]]) -> set[UUID]:
        ids, runpod_job_ids, endpoint_ids = (list(column) for column in zip(*submissions, strict=True))
        params = {
            "owner": self.owner,
            "ids": ids,
            "runpod_job_ids": runpod_job_ids,
            "endpoint_ids": endpoint_ids,
        }
        async with self._connection() as conn:
            rows = await (await conn.execute(QUERIES["mark_submitted"], params)).fetchall()
        return {row[0] for row in rows}

    async def defer(self, job_id: UUID, reason: str, delay_s: float) -> bool:
        """Hand an unsubmitted job back to the queue, its attempt not counted."""
        return await self._changed("defer", id=job_id, reason=reason, delay_s=delay_s)

    async def mark_running(self, job_id: UUID, queue_s: float | None = None) -> bool:
        """Record that a worker took the job, ``queue_s`` after its submission (if known)."""
        return await self._changed("mark_running", id=job_id, queue_s=queue_s)

    async def resubmit(self, job_id: UUID, reason: str) -> tuple[int, int] | None:
        """Start a new attempt; returns its number and the submission's, or None if this
        dispatcher lost the job."""
        async with self._connection() as conn:
            row = await (
                await conn.execute(QUERIES["resubmit"], {"id": job_id, "owner": self.owner, "reason": reason})
            ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    async def succeed(self, success: Success) -> bool:
        """Move the job to succeeded; False if it is no longer ours. Like submissions, the
        successes of one moment share one statement."""
        outcome = (await self._successes.add(success)).get(success.job_id, False)
        if isinstance(outcome, StoreUnavailable):
            raise outcome
        return outcome

    async def _succeed_many(self, successes: list[Success]) -> Mapping[UUID, bool | StoreUnavailable]:
        try:
            return await self._succeed_rows(successes)
        except psycopg.OperationalError as error:  # the database, not a row: all wait for the lease
            return dict.fromkeys((success.job_id for success in successes), _unavailable(error))
        except psycopg.Error as error:
            if len(successes) == 1:
                return {successes[0].job_id: _unavailable(error)}
        # One bad row fails the whole statement: record the others one by one, so it alone fails.
        outcomes: dict[UUID, bool | StoreUnavailable] = {}
        for success in successes:
            try:
                outcomes |= await self._succeed_rows([success])
            except psycopg.Error as error:
                outcomes[success.job_id] = _unavailable(error)
        return outcomes

    async def _succeed_rows(self, successes: list[Success]) -> dict[UUID, bool]:
        """One statement for all; psycopg's own errors go up, for _succeed_many to sort out."""
        names = (
            "ids",
            "image_urls",
            "hashes",
            "widths",
            "heights",
            "steps",
            "seeds",
            "timings",
            "polls",
            "reused_from",
        )
        rows = [tuple(getattr(success, field.name) for field in fields(Success)) for success in successes]
        columns = [list(column) for column in zip(*rows, strict=True)]
        columns[names.index("timings")] = [Jsonb(timings) for timings in columns[names.index("timings")]]
        params = {"owner": self.owner, **dict(zip(names, columns, strict=True))}
        async with self.pool.connection() as conn:
            answers = await (await conn.execute(QUERIES["succeed"], params)).fetchall()
        return {job_id: bool(stored) for job_id, stored in answers}

    async def fail(
        self,
        job: ClaimedJob,
        error: str,
        *,
        retryable: bool,
        status_polls: int,
        backoff_base_s: float,
        backoff_max_s: float,
    ) -> JobStatus | None:
        """QUEUED (to be retried), FAILED, or None if this dispatcher lost the job."""
        params = {
            "id": job.id,
            "owner": self.owner,
            "error": error[:2000],
            "retryable": retryable,
            "polls": status_polls,
            "backoff_base_s": backoff_base_s,
            "backoff_max_s": backoff_max_s,
        }
        async with self._connection() as conn:
            row = await (await conn.execute(QUERIES["fail"], params)).fetchone()
        return None if row is None or row[0] is None else JobStatus(row[0])

    async def renew_leases(self, job_ids: list[UUID]) -> set[UUID]:
        """Extend the leases still ours; returns the ids renewed."""
        return await self._ids("renew_leases", job_ids)

    async def release_leases(self, job_ids: list[UUID]) -> set[UUID]:
        return await self._ids("release_leases", job_ids)

    async def publish_capacity(self, workers: int, in_flight: int) -> int:
        """What this dispatcher sees, for batch-status's estimates; returns the jobs the other
        live dispatchers hold."""
        async with self._connection() as conn:
            row = await (
                await conn.execute(
                    QUERIES["publish_capacity"],
                    {"owner": self.owner, "workers": workers, "in_flight": in_flight},
                )
            ).fetchone()
        return int(row[0]) if row is not None else 0

    async def record_progress(self, job_id: UUID, progress: dict[str, int]) -> None:
        """The worker's step progress on a running job (only while the job is ours)."""
        async with self._connection() as conn:
            await conn.execute(
                QUERIES["record_progress"], {"id": job_id, "owner": self.owner, "progress": Jsonb(progress)}
            )

    async def forget_capacity(self) -> None:
        async with self._connection() as conn:
            await conn.execute(QUERIES["forget_capacity"], {"owner": self.owner})

    async def find_reusable(self, job: ClaimedJob) -> ReusableImage | None:
        params = {
            "prompt": job.prompt,
            "quality": job.quality,
            "aspect_ratio": job.aspect_ratio,
            "seed": job.seed,
            "format": job.format,
            "output_quality": job.output_quality,
            "adapter_sha256": job.adapter_sha256,
            "character_weight": job.character_weight,
        }
        async with self._connection() as conn, conn.cursor(row_factory=class_row(ReusableImage)) as cursor:
            await cursor.execute(QUERIES["find_reusable"], params)
            return await cursor.fetchone()

    # ---- the outbound webhooks' outbox ------------------------------------------------------
    async def claim_webhook_deliveries(self, limit: int, lease_s: float) -> list[WebhookDelivery]:
        params = {"owner": self.owner, "limit": limit, "lease_s": lease_s}
        async with self._connection() as conn, conn.cursor(row_factory=class_row(WebhookDelivery)) as cursor:
            await cursor.execute(QUERIES["claim_webhook_deliveries"], params)
            return await cursor.fetchall()

    async def webhook_delivered(self, delivery_id: int, status: int | None) -> None:
        async with self._connection() as conn:
            await conn.execute(
                QUERIES["webhook_delivered"], {"id": delivery_id, "owner": self.owner, "status": status}
            )

    async def webhook_attempt_failed(
        self, delivery_id: int, status: int | None, error: str, retry_in_s: float, give_up_s: float
    ) -> str | None:
        """'pending' (to be retried) or 'failed' (given up); None if the lease was lost."""
        params = {
            "id": delivery_id,
            "owner": self.owner,
            "status": status,
            "error": error,
            "retry_in_s": retry_in_s,
            "give_up_s": give_up_s,
        }
        async with self._connection() as conn:
            row = await (await conn.execute(QUERIES["webhook_attempt_failed"], params)).fetchone()
        return None if row is None else str(row[0])

    async def announce_completion(self, job_id: UUID) -> None:
        """Tell the other replicas that this job's webhook arrived here."""
        async with self._connection() as conn:
            await conn.execute(QUERIES["announce_completion"], {"id": job_id})

    async def _changed(self, query: str, **params: Any) -> bool:
        async with self._connection() as conn:
            row = await (await conn.execute(QUERIES[query], {"owner": self.owner, **params})).fetchone()
        return row is not None

    async def _ids(self, query: str, job_ids: list[UUID]) -> set[UUID]:
        if not job_ids:
            return set()
        params = {"owner": self.owner, "ids": job_ids, "lease_s": self.lease_s}
        async with self._connection() as conn:
            rows = await (await conn.execute(QUERIES[query], params)).fetchall()
        return {row[0] for row in rows}


def _unavailable(error: psycopg.Error) -> StoreUnavailable:
    unavailable = StoreUnavailable(first_line(error))
    unavailable.__cause__ = error
    return unavailable


class Coalescer(Generic[T, R]):
    """Runs the calls made in one turn of the event loop as one: the first call schedules the
    run for the next turn, the calls made until then join it, and all get its one result."""

    def __init__(self, run: Callable[[list[T]], Awaitable[R]]) -> None:
        self._run = run
        self._next: tuple[list[T], asyncio.Task[R]] | None = None

    async def add(self, item: T) -> R:
        if self._next is None:
            items: list[T] = []
            self._next = (items, asyncio.create_task(self._run_batch(items)))
        items, batch = self._next
        items.append(item)
        return await asyncio.shield(batch)  # a caller cancelled does not cancel the others' run

    async def _run_batch(self, items: list[T]) -> R:
        self._next = None  # from here on, calls go to the next batch
        return await self._run(items)
