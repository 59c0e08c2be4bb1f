"""Pickup latency: from a batch's INSERT commit to its RunPod /run request arriving at the
stand-in, at a steady rate of single-prompt batches. The wake-ups are measured side by side
in one run, each on a fresh database: LISTEN/NOTIFY, Supabase Realtime (through the Realtime
stand-in, relaying from the same Postgres), and the sweep alone. Prints one JSON object on
its last line.

    python bench/pickup.py [--rate 100] [--seconds 5] [--sweep 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._cloud import USER, BenchCloud, bench_cloud, dispatcher_process, summary_ms
from devstack.realtime import RealtimeStandIn
from devstack.servers import LoopbackServer
from devstack.stack import supabase_app


async def measure(
    cloud: BenchCloud, mode: str, rate: float, seconds: float, sweep_s: float
) -> dict[str, object]:
    database = cloud.fresh_database(f"pickup_{mode.replace('-', '_')}")
    async with contextlib.AsyncExitStack() as realtime:
        overrides = {}
        if mode == "realtime":  # Storage and Realtime under one SUPABASE_URL, as on Supabase
            standin = RealtimeStandIn(cloud.keys)
            await standin.start(cloud.postgres.dsn(database))
            realtime.push_async_callback(standin.stop)
            app = supabase_app(cloud.keys, cloud.storage, standin)
            server = await LoopbackServer(app, "supabase", websockets=True).start()
            realtime.push_async_callback(server.stop)
            overrides["SUPABASE_URL"] = server.url
        environment = cloud.environment(
            database,
            WAKEUP_SOURCE={"listen": "postgres", "realtime": "realtime"}.get(mode, "none"),
            SWEEP_INTERVAL_SECONDS=str(sweep_s),
            MAX_IN_FLIGHT="4096",
            MAX_IN_FLIGHT_PER_USER="4096",
            ADMISSION="fixed",  # insert to /run, nothing held back: the wake-up path is measured
            **overrides,
        )
        return await _pickup(cloud, database, environment, mode, rate, seconds)


async def _pickup(
    cloud: BenchCloud, database: str, environment: dict[str, str], mode: str, rate: float, seconds: float
) -> dict[str, object]:
    inserted: dict[str, float] = {}
    async with (
        dispatcher_process(environment) as dispatcher,
        await psycopg.AsyncConnection.connect(cloud.postgres.dsn(database), autocommit=True) as conn,
    ):
        await wakeup_connected(dispatcher.port)
        started, count = time.monotonic(), int(rate * seconds)
        for n in range(count):
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            row = await (
                await conn.execute(
                    "insert into image_batches (user_id, prompts) values (%s, %s) returning id",
                    (USER, [f"pickup {n}"]),
                )
            ).fetchone()
            assert row is not None
            inserted[str(row[0])] = time.time()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = await (
                await conn.execute(
                    "select batch_id::text, runpod_job_id from image_jobs where runpod_job_id is not null"
                )
            ).fetchall()
            if len(rows) == count:
                break
            await asyncio.sleep(0.2)
    submitted = cloud.platform.counters.submitted_at
    latencies = [submitted[runpod_id] - inserted[batch_id] for batch_id, runpod_id in rows]
    return {"mode": mode, "batches": count, "picked_up": len(latencies), **summary_ms(latencies)}


async def wakeup_connected(port: int, timeout_s: float = 15) -> None:
    """Until the dispatcher's /healthz says its wake-up sources are connected."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while not all((await http.get(f"http://127.0.0.1:{port}/healthz")).json()["wakeup"].values()):
            assert time.monotonic() < deadline, "the wake-up source did not connect"
            await asyncio.sleep(0.05)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=100, help="batches per second (default 100)")
    parser.add_argument("--seconds", type=float, default=5, help="how long to insert, per mode (default 5)")
    parser.add_argument("--sweep", type=float, default=1.0, help="sweep interval in seconds (default 1)")
    args = parser.parse_args()
    async with bench_cloud() as cloud:
        cloud.start_workers(16, "0")
        results = [
            await measure(cloud, mode, args.rate, args.seconds, args.sweep)
            for mode in ("listen", "realtime", "sweep-only")
        ]
    for result in results:
        print(f"{result['mode']:>10}: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms", file=sys.stderr)
    print(
        json.dumps(
            {"bench": "pickup", "rate_per_s": args.rate, "sweep_interval_s": args.sweep, "modes": results}
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
