"""The dispatcher against a real Postgres and the RunPod and Storage stand-ins, all in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from devstack.frontend import insert_batch_as_user
from devstack.keys import LocalKeys
from devstack.runpod_api import build_runpod_app
from devstack.runpod_platform import Platform
from devstack.servers import LoopbackServer
from devstack.storage import Bucket, LocalStorage
from devstack.synthetic import ExecutionTime, SyntheticWorkers
from dispatcher.runpod import RetryPolicy
from dispatcher.service import Service, running_service
from dispatcher.settings import DispatcherSettings

API_KEY = "rpa_test"
ENDPOINTS = ["ep-primary", "ep-backup"]
USER_A = "aaaaaaaa-0000-0000-0000-00000000000a"
USER_B = "bbbbbbbb-0000-0000-0000-00000000000b"
FAST_RETRIES = RetryPolicy(attempts=8, initial_wait_s=0.01, max_wait_s=0.05, max_retry_after_s=0.05)


@dataclass
class Cloud:
    """The stand-ins a dispatcher talks to."""

    platform: Platform
    runpod_server: LoopbackServer
    storage: LocalStorage
    storage_server: LoopbackServer
    keys: LocalKeys
    workers: list[SyntheticWorkers]

    def add_workers(self, count: int = 4, seconds: str = "0.05", endpoint: str = ENDPOINTS[0]) -> None:
        workers = SyntheticWorkers(self.platform, endpoint, count, ExecutionTime.parse(seconds), seed=2)
        workers.start()
        self.workers.append(workers)

    async def stop_workers(self) -> None:
        async with AsyncExitStack() as stopping:
            for workers in self.workers:
                stopping.push_async_callback(workers.stop)


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    keys = LocalKeys()
    platform = Platform(ENDPOINTS, webhook_retry_delay_s=0.05, seed=5)
    storage = LocalStorage(tmp_path / "storage", keys)
    storage.add_bucket(
        Bucket(
            "generated-assets",
            public=True,
            file_size_limit=20 * 1024 * 1024,
            allowed_mime_types=["image/png", "image/jpeg", "image/webp"],
        )
    )
    storage.add_bucket(Bucket("character-adapters", False, 512 * 1024 * 1024, ["application/octet-stream"]))
    runpod_server = LoopbackServer(
        build_runpod_app(platform, API_KEY, "rpw_test", take_timeout_s=1), "runpod"
    )
    storage_server = LoopbackServer(storage.app(), "storage")
    await platform.start()
    await runpod_server.start()
    await storage_server.start()
    stack = Cloud(platform, runpod_server, storage, storage_server, keys, [])
    # Every step of the teardown runs, whatever an earlier one raised: a server left listening
    # fails a later test with an unclosed socket of this one's.
    async with AsyncExitStack() as teardown:
        teardown.push_async_callback(storage_server.stop)
        teardown.push_async_callback(runpod_server.stop)
        teardown.push_async_callback(platform.close)
        teardown.push_async_callback(stack.stop_workers)  # the test added them: stopped first
        yield stack


def settings_for(database_url: str, cloud: Cloud, **overrides: Any) -> DispatcherSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "supabase_url": cloud.storage_server.url,
        "supabase_service_role_key": cloud.keys.service_role_key,
        "runpod_api_key": API_KEY,
        "runpod_endpoint_id": ",".join(ENDPOINTS[:1]),
        "runpod_endpoint_base_url": f"{cloud.runpod_server.url}/v2",
        "sweep_interval_seconds": 0.5,
        "lease_seconds": 3,
        "backoff_base_seconds": 0.05,
        "backoff_max_seconds": 0.2,
        "lost_submit_grace_seconds": 0.5,
        **overrides,
    }
    return DispatcherSettings.model_validate(values)


DispatcherFactory = Callable[..., AbstractAsyncContextManager[Service]]


@pytest.fixture
def dispatcher(database_url: str, cloud: Cloud) -> DispatcherFactory:
    """``async with dispatcher(**settings) as service:`` runs one dispatcher in this process."""

    def start(**overrides: Any) -> AbstractAsyncContextManager[Service]:
        return running_service(settings_for(database_url, cloud, **overrides), FAST_RETRIES, stop_grace_s=2)

    return start


async def insert_batch(database_url: str, prompts: list[str], user_id: str = USER_A, **columns: Any) -> UUID:
    """Insert a batch exactly as the frontend does: as the authenticated user, through RLS."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("insert into auth.users (id) values (%s) on conflict do nothing", (user_id,))
    return await insert_batch_as_user(database_url, user_id, prompts, **columns)


async def wait_for_batch(database_url: str, batch_id: UUID, timeout_s: float = 30) -> dict[str, Any]:
    """The batch's final 'complete' event, waited for with a deadline."""
    deadline = time.monotonic() + timeout_s
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("listen image_job_events")
        while True:
            row = await (
                await conn.execute(
                    "select payload from image_job_events where batch_id = %s and kind = 'complete'"
                    " order by id desc limit 1",
                    (batch_id,),
                )
            ).fetchone()
            if row is not None:
                payload: dict[str, Any] = row[0]
                return payload
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"batch {batch_id} did not complete in {timeout_s} s"
            async for _ in conn.notifies(timeout=min(remaining, 1.0), stop_after=1):
                pass


async def jobs_of(database_url: str, batch_id: UUID) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
        await cursor.execute("select * from image_jobs where batch_id = %s order by position", (batch_id,))
        return await cursor.fetchall()


async def events_of(database_url: str, batch_id: UUID) -> list[tuple[str, dict[str, Any]]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        rows = await (
            await conn.execute(
                "select kind, payload from image_job_events where batch_id = %s order by id", (batch_id,)
            )
        ).fetchall()
    return [(row[0], row[1]) for row in rows]


async def wait_until(condition: Callable[[], Any], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
