"""What the dispatcher benchmarks share: a real Postgres, the RunPod and Storage stand-ins
in this process, and helpers to insert batches and read results."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from devstack.keys import LocalKeys
from devstack.postgres import PROJECT_USER, PostgresCluster, free_port
from devstack.runpod_api import build_runpod_app
from devstack.runpod_platform import Platform
from devstack.servers import LoopbackServer
from devstack.storage import Bucket, LocalStorage
from devstack.synthetic import ExecutionTime, SyntheticWorkers
from dispatcher.settings import DispatcherSettings
from kernel.schema import apply_migrations, apply_shim

API_KEY = "rpa_bench"
ENDPOINT = "bench-endpoint"
USER = "00000000-0000-4000-8000-00000000b0b0"
OTHER_USER = "00000000-0000-4000-8000-00000000b0b1"  # the newcomer of the fairness regime


@dataclass
class BenchCloud:
    postgres: PostgresCluster
    platform: Platform
    runpod_server: LoopbackServer
    storage_server: LoopbackServer
    keys: LocalKeys
    workers: list[SyntheticWorkers]
    storage: LocalStorage

    def settings(self, database: str, **overrides: Any) -> DispatcherSettings:
        return DispatcherSettings.model_validate(
            {
                "database_url": self.postgres.dsn(database),
                "supabase_url": self.storage_server.url,
                "supabase_service_role_key": self.keys.service_role_key,
                "runpod_api_key": API_KEY,
                "runpod_endpoint_id": ENDPOINT,
                "runpod_endpoint_base_url": f"{self.runpod_server.url}/v2",
                **overrides,
            }
        )

    def environment(self, database: str, **overrides: str) -> dict[str, str]:
        settings = self.settings(database)
        return {
            "DATABASE_URL": str(settings.database_url),
            "SUPABASE_URL": settings.supabase_url,
            "SUPABASE_SERVICE_ROLE_KEY": self.keys.service_role_key,
            "RUNPOD_API_KEY": API_KEY,
            "RUNPOD_ENDPOINT_ID": ENDPOINT,
            "RUNPOD_ENDPOINT_BASE_URL": settings.runpod_endpoint_base_url,
            **overrides,
        }

    def start_workers(
        self, count: int, seconds: str, cold_start_s: float = 0.0, payload_bytes: int = 0
    ) -> None:
        workers = SyntheticWorkers(
            self.platform,
            ENDPOINT,
            count,
            ExecutionTime.parse(seconds),
            seed=11,
            cold_start_s=cold_start_s,
            payload_bytes=payload_bytes,
        )
        workers.start()
        self.workers.append(workers)

    async def stop_workers(self) -> None:
        for workers in self.workers:
            await workers.stop()
        self.workers.clear()

    def fresh_database(self, name: str) -> str:
        with psycopg.connect(self.postgres.admin_dsn(), autocommit=True) as conn:
            conn.execute(f"create database {name}")
        with psycopg.connect(self.postgres.admin_dsn(name), autocommit=True) as conn:
            apply_shim(conn)
            conn.execute(f"alter database {name} owner to {PROJECT_USER}")
            apply_migrations(conn, role=PROJECT_USER)
            conn.execute("insert into auth.users (id) values (%s), (%s)", (USER, OTHER_USER))
        return name


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, ..., utime (11), stime, cutime, cstime."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of a process (and of its reaped children, if asked)."""
    ticks = sum(int(value) for value in _stat_fields(pid)[11 : 15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(postgres: PostgresCluster) -> float:
    """CPU time of the whole cluster so far: the postmaster, its live and its exited backends."""
    postmaster = int((postgres.datadir / "postmaster.pid").read_text().split()[0])
    total = _cpu_seconds(postmaster, children=True)
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(_stat_fields(proc.name)[1]) == postmaster:
                total += _cpu_seconds(int(proc.name))
    return total


@dataclass
class DispatcherProcess:
    """``zimage dispatch`` in its own process, as deployed; its CPU time and peak RSS are readable."""

    process: subprocess.Popen[bytes]
    port: int

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.process.pid)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


@contextlib.asynccontextmanager
async def dispatcher_process(
    environment: dict[str, str], port: int = 0, command: str = "dispatch"
) -> AsyncIterator[DispatcherProcess]:
    """``zimage <command>`` (dispatch, http or serve) in its own process."""
    port = port or free_port()
    log = Path(tempfile.mkdtemp(prefix="zimage-bench-")) / "dispatcher.log"  # kept only if it failed
    with log.open("wb") as output:
        process = subprocess.Popen(  # noqa: ASYNC220 (started once, before the measurement)
            [sys.executable, "-m", "zimage.cli", command, "--port", str(port)],
            env={**os.environ, **environment},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    running = DispatcherProcess(process, port)
    try:
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"zimage {command} did not start; see {log}")
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # its LISTEN connection is up by now
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        if await asyncio.to_thread(process.wait, 30) == 0:
            shutil.rmtree(log.parent)


@contextlib.asynccontextmanager
async def bench_cloud() -> AsyncIterator[BenchCloud]:
    keys = LocalKeys()
    platform = Platform([ENDPOINT], seed=1)
    stored = Path(tempfile.mkdtemp(prefix="zimage-bench-"))
    storage = LocalStorage(stored, keys)
    storage.add_bucket(Bucket("generated-assets", public=True))
    runpod_server = LoopbackServer(
        build_runpod_app(platform, API_KEY, "rpw_bench", take_timeout_s=1), "runpod"
    )
    storage_server = LoopbackServer(storage.app(), "storage")
    with PostgresCluster() as postgres:
        await platform.start()
        await runpod_server.start()
        await storage_server.start()
        cloud = BenchCloud(postgres, platform, runpod_server, storage_server, keys, [], storage)
        try:
            yield cloud
        finally:
            await cloud.stop_workers()
            await platform.close()
            await runpod_server.stop()
            await storage_server.stop()
            shutil.rmtree(stored)  # thousands of PNGs a run


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values_s, 0.5) * 1000, 2),
        "p99_ms": round(percentile(values_s, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(values_s) * 1000, 2),
        "n": len(values_s),
    }
