"""SSE fan-out: N subscribers follow one batch of M images on batch-events while its jobs finish.

The app runs as deployed (``zimage http``, its own process); the jobs are finished through the
dispatcher's own state-machine functions at a steady rate, and every subscriber reads its
stream over a plain socket. Reports the delay from each event's commit to its receipt
(p50/p99 over every event and subscriber), the app's peak RSS, and the database connections
the fan-out used. Prints one JSON object on its last line.

    python bench/sse_fanout.py [--subscribers 1000] [--images 100] [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from uuid import UUID

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.broker import APPLICATION_NAME
from bench._cloud import USER, BenchCloud, bench_cloud, dispatcher_process, summary_ms
from devstack.frontend import insert_batch_as_user
from devstack.jobs import finish_job

EVENT_ID = re.compile(rb"\nid: (\d+)\n")


async def subscriber(
    port: int, path: str, token: str, received: dict[int, list[float]], ready: asyncio.Event
) -> None:
    """A minimal SSE reader: one GET, then each event's ``id:`` timed as it arrives (frames are
    ``data: ...\nid: N\n\n``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    status = await reader.readline()
    assert b" 200 " in status, status
    ready.set()
    while chunk := await reader.read(65536):
        arrived = time.monotonic()
        for seq in EVENT_ID.findall(chunk):
            received.setdefault(int(seq), []).append(arrived)
        if b'data: {"type":"complete"' in chunk:
            break
    writer.close()


async def finish_jobs(database_url: str, batch_id: UUID, rate: float, committed: dict[int, float]) -> None:
    """Succeed each job as the dispatcher does, and note when each event seq became visible."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        jobs = [
            row[0]
            for row in await (
                await conn.execute(
                    "select id from image_jobs where batch_id = %s order by position", (batch_id,)
                )
            ).fetchall()
        ]
        seen = 1  # "Creating N image jobs..." was replayed
        for job_id in jobs:
            started = time.monotonic()
            await finish_job(conn, job_id)
            done = time.monotonic()
            row = await (
                await conn.execute("select last_event_seq from image_batches where id = %s", (batch_id,))
            ).fetchone()
            assert row is not None
            for seq in range(seen + 1, row[0] + 1):
                committed[seq] = done
            seen = row[0]
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))


async def fan_out_connections(database_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        row = await (
            await conn.execute(
                "select count(*) from pg_stat_activity where application_name = %s", (APPLICATION_NAME,)
            )
        ).fetchone()
    return int(row[0]) if row else 0


async def measure(cloud: BenchCloud, subscribers: int, images: int, rate: float) -> dict[str, object]:
    database = cloud.fresh_database("sse_fanout")
    database_url = cloud.postgres.dsn(database)
    token = cloud.keys.user_token(USER)
    environment = {
        **cloud.environment(database),
        "SUPABASE_JWT_SECRET": cloud.keys.jwt_secret,
        "RATE_LIMIT_BURST": "1000",
    }
    async with dispatcher_process(environment, command="http") as app:
        batch_id = await insert_batch_as_user(database_url, USER, [f"Scene {n}" for n in range(images)])
        received: dict[int, list[float]] = {}
        readies = [asyncio.Event() for _ in range(subscribers)]
        path = f"/functions/v1/batch-events?batch_id={batch_id}"
        readers = [
            asyncio.create_task(subscriber(app.port, path, token, received, ready)) for ready in readies
        ]
        await asyncio.gather(*(ready.wait() for ready in readies))
        await asyncio.sleep(0.5)  # every replay delivered
        connections = await fan_out_connections(database_url)
        committed: dict[int, float] = {}
        started = time.monotonic()
        await finish_jobs(database_url, batch_id, rate, committed)
        await asyncio.wait_for(asyncio.gather(*readers), timeout=120)
        elapsed = time.monotonic() - started
        delays = [at - committed[seq] for seq, times in received.items() if seq in committed for at in times]
        expected = len(committed) * subscribers
        return {
            "subscribers": subscribers,
            "images": images,
            "events_per_subscriber": len(received),
            "deliveries": len(delays),
            "missing_deliveries": expected - len(delays),
            "delivery": summary_ms(delays),
            "finish_rate_per_s": round(images / elapsed, 1),
            "app_peak_rss_mb": round(app.peak_rss_mb(), 1),
            "app_cpu_s": round(app.cpu_seconds(), 2),
            "fan_out_db_connections": max(connections, await fan_out_connections(database_url)),
        }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50, help="jobs finished per second")
    args = parser.parse_args()
    async with bench_cloud() as cloud:
        result = await measure(cloud, args.subscribers, args.images, args.rate)
    print(json.dumps({"bench": "sse_fanout", **result}))


if __name__ == "__main__":
    asyncio.run(main())
