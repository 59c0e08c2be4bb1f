"""In-process stand-ins on loopback ports, started and stopped by each test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import runpod
from starlette.applications import Starlette

from devstack.keys import LocalKeys
from devstack.realtime import RealtimeStandIn
from devstack.runpod_api import build_runpod_app
from devstack.runpod_platform import Platform
from devstack.servers import LoopbackServer
from devstack.storage import Bucket, LocalStorage
from devstack.synthetic import ExecutionTime, SyntheticWorkers

REALTIME_USER_A = "aaaaaaaa-0000-4000-8000-00000000000a"
REALTIME_USER_B = "bbbbbbbb-0000-4000-8000-00000000000b"
API_KEY = "rpa_test_key"
WORKER_KEY = "rpw_test_key"
ENDPOINT = "ep-test"


@dataclass
class RunPodStandIn:
    platform: Platform
    server: LoopbackServer

    @property
    def base_url(self) -> str:
        return f"{self.server.url}/v2"

    def client(self, key: str = API_KEY) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"{self.base_url}/{ENDPOINT}", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )

    def synthetic_workers(self, count: int = 2, seconds: str = "0.05") -> SyntheticWorkers:
        workers = SyntheticWorkers(self.platform, ENDPOINT, count, ExecutionTime.parse(seconds), seed=1)
        workers.start()
        return workers


@pytest.fixture
async def standin(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RunPodStandIn]:
    platform = Platform([ENDPOINT], webhook_retry_delay_s=0.05, seed=7)
    server = LoopbackServer(build_runpod_app(platform, API_KEY, WORKER_KEY, take_timeout_s=1), "runpod")
    await platform.start()
    await server.start()
    # The official client reads these module globals, as set by users of the SDK.
    monkeypatch.setattr(runpod, "api_key", API_KEY)
    monkeypatch.setattr(runpod, "endpoint_url_base", f"{server.url}/v2")
    yield RunPodStandIn(platform, server)
    await platform.close()
    await server.stop()


@dataclass
class StorageStandIn:
    storage: LocalStorage
    server: LoopbackServer
    keys: LocalKeys


@pytest.fixture
async def storage_standin(tmp_path: Path) -> AsyncIterator[StorageStandIn]:
    keys = LocalKeys()
    storage = LocalStorage(tmp_path / "storage", keys)
    storage.add_bucket(
        Bucket(
            "generated-assets",
            public=True,
            file_size_limit=1024 * 1024,
            allowed_mime_types=["image/png", "image/jpeg", "image/webp"],
        )
    )
    server = LoopbackServer(storage.app(), "storage")
    await server.start()
    yield StorageStandIn(storage, server, keys)
    await server.stop()


@pytest.fixture
async def realtime(database_url: str) -> AsyncIterator[tuple[str, LocalKeys]]:
    """The Realtime stand-in over this test's database, with two users: (its /realtime/v1 URL, keys)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for user in (REALTIME_USER_A, REALTIME_USER_B):
            await conn.execute("insert into auth.users (id) values (%s)", (user,))
    keys = LocalKeys()
    standin = RealtimeStandIn(keys)
    await standin.start(database_url)
    server = await LoopbackServer(Starlette(routes=standin.routes()), "realtime", websockets=True).start()
    yield f"{server.url}/realtime/v1", keys
    await standin.stop()
    await server.stop()
