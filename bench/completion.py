"""Completion latency: from the stand-in finishing a job to its row being ``succeeded``, and the
RunPod /status calls each job cost, for webhook delivery, adaptive polling and the old
service's fixed 3 s polling, measured side by side in one run. Execution times are drawn
uniformly between 1 and 5 s; the synthetic workers report step progress as the real worker
does. Prints one JSON object on its last line.

By default every job has a worker of its own, which measures detection alone. The queued
variant, ``--workers 4``, gives the jobs fewer workers than there are of them, so most wait in
RunPod's queue (or, with capacity admission, in Postgres) first: the common case.

    python bench/completion.py [--jobs 40] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._cloud import USER, BenchCloud, bench_cloud, dispatcher_process, summary_ms
from devstack.postgres import free_port


def mode_environment(mode: str, port: int) -> dict[str, str]:
    if mode == "webhook":
        return {"WEBHOOK_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    if mode == "fixed-3s":
        return {"FIXED_POLL_INTERVAL_SECONDS": "3"}
    return {}


MODES = ("webhook", "adaptive", "fixed-3s")


async def measure(cloud: BenchCloud, mode: str, jobs: int) -> dict[str, object]:
    database = cloud.fresh_database(f"completion_{mode.replace('-', '_')}")
    port = free_port()
    environment = cloud.environment(database, MAX_IN_FLIGHT_PER_USER="1000", **mode_environment(mode, port))
    async with (
        dispatcher_process(environment, port),
        await psycopg.AsyncConnection.connect(cloud.postgres.dsn(database), autocommit=True) as conn,
    ):
        await conn.execute(
            "insert into image_batches (user_id, prompts) values (%s, %s)",
            (USER, [f"completion {n}" for n in range(jobs)]),
        )
        rows: list[tuple[str, float, int]] = []
        for _ in range(3000):
            rows = await (
                await conn.execute(
                    "select runpod_job_id, extract(epoch from finished_at)::float8, status_polls"
                    " from image_jobs where status = 'succeeded'"
                )
            ).fetchall()
            if len(rows) == jobs:
                break
            await asyncio.sleep(0.1)
    counters = cloud.platform.counters
    delays = [finished - counters.finished_at[runpod_id] for runpod_id, finished, _ in rows]
    executions = [cloud.platform.jobs[runpod_id] for runpod_id, _, _ in rows]
    relative = [
        delay / ((job.finished_at or 0) - (job.started_at or 0))
        for delay, job in zip(delays, executions, strict=True)
    ]
    polls = [counters.status_polls[runpod_id] for runpod_id, _, _ in rows]
    return {
        "mode": mode,
        "jobs": len(rows),
        **summary_ms(delays),
        "mean_delay_over_execution": round(statistics.fmean(relative), 4),
        "status_calls_per_job_mean": round(statistics.fmean(polls), 2),
        "status_calls_per_job_max": max(polls),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=40, help="jobs per mode (default 40)")
    parser.add_argument("--workers", type=int, help="synthetic workers (default: one per job)")
    args = parser.parse_args()
    async with bench_cloud() as cloud:
        cloud.start_workers(args.workers or args.jobs, "uniform:1:5")
        results = [await measure(cloud, mode, args.jobs) for mode in MODES]
    for result in results:
        print(
            f"{result['mode']:>9}: p50 {result['p50_ms']} ms, mean {result['mean_ms']} ms "
            f"({result['mean_delay_over_execution']:.1%} of execution), "
            f"{result['status_calls_per_job_mean']} status calls per job",
            file=sys.stderr,
        )
    workers = args.workers or args.jobs
    print(
        json.dumps(
            {"bench": "completion", "execution_s": "uniform 1..5", "workers": workers, "modes": results}
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
