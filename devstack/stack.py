"""The local stack: Postgres with the shim and migrations, the RunPod stand-in with real or
synthetic workers, and the Storage stand-in, all on free loopback ports.

``Devstack.environment()`` is what ``zimage devstack up`` prints as ``export`` lines:
the dispatcher, the app and the official clients are configured by exactly these.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from devstack.keys import LocalKeys
from devstack.postgres import PROJECT_USER, PostgresCluster
from devstack.realtime import RealtimeStandIn
from devstack.runpod_api import build_runpod_app
from devstack.runpod_platform import Faults, Platform
from devstack.servers import LoopbackServer
from devstack.storage import Bucket, LocalStorage
from devstack.synthetic import ExecutionTime, SyntheticWorkers
from devstack.workers import WorkerProcesses
from kernel.schema import SUPABASE_DIR, apply_migrations, apply_shim

log = structlog.get_logger("devstack")

TINY_MODEL_VERSION = "v1"  # bump when worker/tiny.py changes what it builds


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zimage"


def ensure_tiny_model(directory: Path | None = None) -> Path:
    """Build the tiny offline Z-Image pipeline once and keep it on disk (in a subprocess:
    this process stays free of torch)."""
    path = directory or cache_dir() / f"tiny-z-image-{TINY_MODEL_VERSION}"
    if (path / "model_index.json").exists():
        return path
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from worker.tiny import "
            "build_tiny_pipeline; build_tiny_pipeline(Path(sys.argv[1]))",
            str(partial),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    partial.replace(path)
    return path


def supabase_app(
    keys: LocalKeys, storage: LocalStorage | None = None, realtime: RealtimeStandIn | None = None
) -> Starlette:
    """What answers at SUPABASE_URL: Auth's published signing keys, and Realtime and Storage when
    given (serve it with websockets on for Realtime)."""

    async def jwks(_: Request) -> Response:
        return JSONResponse(keys.jwks())

    routes: list[BaseRoute] = [Route("/auth/v1/.well-known/jwks.json", jwks, methods=["GET"])]
    if realtime is not None:
        routes.extend(realtime.routes())
    if storage is not None:
        routes.append(Mount("/", app=storage.app()))
    return Starlette(routes=routes)


@dataclass
class DevstackConfig:
    synthetic: bool = False
    workers: int = 1
    execution_time: str = "0.5"  # synthetic workers only
    endpoints: int = 1
    model_id: str | None = None  # real workers; default: the tiny offline pipeline
    data_dir: Path | None = None
    faults: Faults = field(default_factory=Faults)
    webhook_retry_delay_s: float = 10
    take_timeout_s: float = 10


class Devstack:
    def __init__(self, config: DevstackConfig | None = None) -> None:
        self.config = config or DevstackConfig()
        self.keys = LocalKeys()
        self.runpod_api_key = f"rpa_local_{secrets.token_hex(16)}"
        self.worker_key = f"rpw_local_{secrets.token_hex(16)}"
        suffix = "abcdefghij"
        self.endpoint_ids = [f"local-zimage-{suffix[index]}" for index in range(self.config.endpoints)]
        self.data_dir = self.config.data_dir or Path(tempfile.mkdtemp(prefix="zimage-devstack-"))
        self.postgres = PostgresCluster()
        self.platform = Platform(
            self.endpoint_ids,
            faults=self.config.faults,
            webhook_retry_delay_s=self.config.webhook_retry_delay_s,
        )
        self.storage = LocalStorage(self.data_dir / "storage", self.keys)
        self.runpod_server = LoopbackServer(
            build_runpod_app(self.platform, self.runpod_api_key, self.worker_key, self.config.take_timeout_s),
            "runpod",
        )
        self.realtime = RealtimeStandIn(self.keys)
        self.supabase_server = LoopbackServer(
            supabase_app(self.keys, self.storage, self.realtime), "supabase", websockets=True
        )
        self.synthetic: list[SyntheticWorkers] = []
        self.processes: list[WorkerProcesses] = []
        self.model_id: str | None = None

    def describe_workers(self) -> str:
        """Which workers run, said plainly (the tiny pipeline's images are noise)."""
        count = (
            f"{self.config.workers} {'synthetic' if self.config.synthetic else 'real'} worker(s) per endpoint"
        )
        if self.config.synthetic:
            return f"{count} (a load generator returning flat PNGs; no model)"
        if self.config.model_id:
            return f"{count} under the runpod SDK, on MODEL_ID={self.model_id}"
        return (
            f"{count} under the runpod SDK, on the tiny offline Z-Image pipeline at {self.model_id} "
            "(random weights: the images are noise; set MODEL_ID for real weights)"
        )

    @property
    def database_url(self) -> str:
        return self.postgres.dsn()

    def environment(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "SUPABASE_URL": self.supabase_server.url,
            "SUPABASE_SERVICE_ROLE_KEY": self.keys.service_role_key,
            "SUPABASE_ANON_KEY": self.keys.anon_key,
            "SUPABASE_JWT_SECRET": self.keys.jwt_secret,
            "RUNPOD_API_KEY": self.runpod_api_key,
            "RUNPOD_ENDPOINT_ID": ",".join(self.endpoint_ids),
            "RUNPOD_ENDPOINT_BASE_URL": f"{self.runpod_server.url}/v2",
        }

    async def start(self) -> Devstack:
        await asyncio.to_thread(self._start_database)
        await self.platform.start()
        await self.runpod_server.start()
        await self.realtime.start(self.database_url)
        await self.supabase_server.start()
        self._load_buckets()
        if self.config.synthetic:
            self._start_synthetic_workers()
        else:
            await self._start_real_workers()
        return self

    async def stop(self) -> None:
        await self.platform.close()  # ends the workers' long polls, so they can exit at once
        for processes in self.processes:
            await asyncio.to_thread(processes.stop)
        for synthetic in self.synthetic:
            await synthetic.stop()
        await self.runpod_server.stop()
        await self.realtime.stop()
        await self.supabase_server.stop()
        await asyncio.to_thread(self.postgres.stop)

    def _start_database(self) -> None:
        self.postgres.start()
        with psycopg.connect(self.postgres.admin_dsn(), autocommit=True) as conn:
            apply_shim(conn)
            apply_migrations(conn, role=PROJECT_USER)
            conn.execute((SUPABASE_DIR / "seed.sql").read_text())

    def _load_buckets(self) -> None:
        """The migrations create the buckets; the storage stand-in serves what they say."""
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute(
                "select id, public, file_size_limit, allowed_mime_types from storage.buckets"
            ).fetchall()
        for bucket_id, public, size_limit, mime_types in rows:
            self.storage.add_bucket(Bucket(bucket_id, public, size_limit, mime_types))

    def _start_synthetic_workers(self) -> None:
        execution_time = ExecutionTime.parse(self.config.execution_time)
        for endpoint_id in self.endpoint_ids:
            workers = SyntheticWorkers(self.platform, endpoint_id, self.config.workers, execution_time)
            workers.start()
            self.synthetic.append(workers)

    async def _start_real_workers(self, ready_timeout_s: float = 180) -> None:
        self.model_id = self.config.model_id or str(await asyncio.to_thread(ensure_tiny_model))
        for endpoint_id in self.endpoint_ids:
            processes = WorkerProcesses(
                self.runpod_server.url,
                endpoint_id,
                self.worker_key,
                self.model_id,
                self.config.workers,
                self.data_dir / "worker-logs",
            )
            processes.start()
            self.processes.append(processes)
        self.platform.on_stop_pod = self._recycle
        for processes in self.processes:
            await processes.wait_until_ready(self.platform.worker_seen, ready_timeout_s)

    def _recycle(self, worker_id: str) -> None:
        for processes in self.processes:
            if worker_id in processes.processes:
                asyncio.get_running_loop().run_in_executor(None, processes.recycle, worker_id)
