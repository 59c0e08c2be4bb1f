"""Throughput: images per second end to end with instant synthetic workers and local storage,
the dispatcher's CPU milliseconds per image, and its peak RSS with 2000 jobs in flight.
The dispatcher runs in its own process, as deployed, so its CPU and memory are its own.
Prints one JSON object on its last line.

    python bench/throughput.py [--images 2000] [--in-flight 2000]

With ``--payload BYTES`` (a realistic image: 1500000 for a 1.5 MB PNG), it measures instead
the two ways an image reaches Storage, side by side in one run: in RunPod's result as base64
(IMAGE_DELIVERY=base64), or uploaded by the worker to a signed URL (upload), for which the
dispatcher reads it back to check it. Per image: the dispatcher's CPU, the bytes that cross
RunPod (the job's input and its result, as JSON), and images per second. The stand-ins share
one process here, so in upload mode it plays the worker's upload as well as Storage (on RunPod
the upload runs on the worker's machine): its CPU is reported beside the dispatcher's.

    python bench/throughput.py --payload 1500000 [--images 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._cloud import (
    USER,
    BenchCloud,
    DispatcherProcess,
    bench_cloud,
    dispatcher_process,
    postgres_cpu_seconds,
)
from devstack.postgres import free_port


async def insert_images(conn: psycopg.AsyncConnection, images: int, tag: str) -> None:
    for start in range(0, images, 100):
        prompts = [f"{tag} {n}" for n in range(start, min(start + 100, images))]
        await conn.execute("insert into image_batches (user_id, prompts) values (%s, %s)", (USER, prompts))


async def count(conn: psycopg.AsyncConnection, where: str) -> int:
    row = await (await conn.execute(f"select count(*) from image_jobs where {where}")).fetchone()
    return int(row[0]) if row else 0


async def wait_for(conn: psycopg.AsyncConnection, where: str, expected: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while await count(conn, where) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{where}: not {expected} rows after {timeout_s} s")
        await asyncio.sleep(0.05)


def cpu_now(cloud: BenchCloud, dispatcher: DispatcherProcess) -> dict[str, float]:
    """CPU seconds so far of the dispatcher, of Postgres, and of this process (the RunPod and
    Storage stand-ins, their synthetic workers, the inserts): where the machine's cores go."""
    return {
        "dispatcher": dispatcher.cpu_seconds(),
        "postgres": postgres_cpu_seconds(cloud.postgres),
        "standins": time.process_time(),
    }


async def throughput(cloud: BenchCloud, images: int, mode: str) -> dict[str, float]:
    """Completion by polling (no public URL, the default) or by webhook."""
    database, port = cloud.fresh_database(f"throughput_{mode}"), free_port()
    # The dispatcher's own cost at a fixed number in flight (admission is regimes.py's subject).
    environment = cloud.environment(
        database, MAX_IN_FLIGHT="512", MAX_IN_FLIGHT_PER_USER="512", ADMISSION="fixed"
    )
    if mode == "webhook":
        environment["WEBHOOK_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    cloud.start_workers(64, "0")
    polls_before = sum(cloud.platform.counters.status_polls.values())
    async with (
        dispatcher_process(environment, port) as dispatcher,
        await psycopg.AsyncConnection.connect(cloud.postgres.dsn(database), autocommit=True) as conn,
    ):
        cpu_before, started = cpu_now(cloud, dispatcher), time.monotonic()
        await insert_images(conn, images, "throughput")
        await wait_for(conn, "status = 'succeeded'", images)
        elapsed = time.monotonic() - started
        cpu = {name: after - cpu_before[name] for name, after in cpu_now(cloud, dispatcher).items()}
    await cloud.stop_workers()
    polls = sum(cloud.platform.counters.status_polls.values()) - polls_before
    return {
        "images": images,
        "seconds": round(elapsed, 2),
        "images_per_s": round(images / elapsed, 1),
        **{f"{name}_cpu_ms_per_image": round(seconds * 1000 / images, 3) for name, seconds in cpu.items()},
        "status_calls_per_image": round(polls / images, 2),
    }


async def delivery(cloud: BenchCloud, images: int, payload_bytes: int, mode: str) -> dict[str, float]:
    """One delivery mode with heavy images: 16 workers, 64 jobs submitted at once, completion by
    webhook (polling would measure its own schedule, not the delivery)."""
    database, port = cloud.fresh_database(f"delivery_{mode}"), free_port()
    environment = cloud.environment(
        database,
        MAX_IN_FLIGHT="64",
        MAX_IN_FLIGHT_PER_USER="64",
        ADMISSION="fixed",
        IMAGE_DELIVERY=mode,
        WEBHOOK_PUBLIC_URL=f"http://127.0.0.1:{port}",
    )
    cloud.start_workers(16, "0", payload_bytes=payload_bytes)
    known = set(cloud.platform.jobs)
    async with (
        dispatcher_process(environment, port) as dispatcher,
        await psycopg.AsyncConnection.connect(cloud.postgres.dsn(database), autocommit=True) as conn,
    ):
        cpu_before, started = cpu_now(cloud, dispatcher), time.monotonic()
        await insert_images(conn, images, f"delivery {mode}")
        await wait_for(conn, "status = 'succeeded'", images, timeout_s=600)
        elapsed = time.monotonic() - started
        cpu = {name: after - cpu_before[name] for name, after in cpu_now(cloud, dispatcher).items()}
    await cloud.stop_workers()
    jobs = [job for job_id, job in cloud.platform.jobs.items() if job_id not in known]
    through_runpod = sum(len(json.dumps(job.input)) + len(json.dumps(job.output)) for job in jobs)
    return {
        "images": images,
        "payload_bytes": payload_bytes,
        "seconds": round(elapsed, 2),
        "images_per_s": round(images / elapsed, 1),
        **{f"{name}_cpu_ms_per_image": round(seconds * 1000 / images, 3) for name, seconds in cpu.items()},
        "bytes_through_runpod_per_image": round(through_runpod / len(jobs)),
    }


async def memory_in_flight(cloud: BenchCloud, in_flight: int) -> dict[str, float]:
    """No workers: every submitted job stays on RunPod's queue, held and polled by the dispatcher."""
    database = cloud.fresh_database("in_flight")
    environment = cloud.environment(
        database, MAX_IN_FLIGHT=str(in_flight), MAX_IN_FLIGHT_PER_USER=str(in_flight), ADMISSION="fixed"
    )
    async with (
        dispatcher_process(environment) as dispatcher,
        await psycopg.AsyncConnection.connect(cloud.postgres.dsn(database), autocommit=True) as conn,
    ):
        await insert_images(conn, in_flight, "in flight")
        await wait_for(conn, "runpod_job_id is not null", in_flight)
        await asyncio.sleep(3)  # a few rounds of polling and lease renewal while all are held
        return {"jobs_in_flight": in_flight, "peak_rss_mb": round(dispatcher.peak_rss_mb(), 1)}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", type=int, default=2000, help="images for the throughput run (default 2000)"
    )
    parser.add_argument("--in-flight", type=int, default=2000, help="jobs held at once for the memory run")
    parser.add_argument(
        "--payload", type=int, default=0, help="bytes per image: compare base64 and upload delivery"
    )
    args = parser.parse_args()
    if args.payload:
        async with bench_cloud() as cloud:
            modes = {
                mode: await delivery(cloud, args.images, args.payload, mode) for mode in ("base64", "upload")
            }
        for mode, result in modes.items():
            print(
                f"{mode}: {result['images_per_s']} images/s; dispatcher CPU ms per image "
                f"{result['dispatcher_cpu_ms_per_image']} (stand-ins {result['standins_cpu_ms_per_image']}); "
                f"{result['bytes_through_runpod_per_image']} bytes through RunPod per image",
                file=sys.stderr,
            )
        print(json.dumps({"bench": "delivery", **modes}))
        return
    async with bench_cloud() as cloud:
        speeds = {mode: await throughput(cloud, args.images, mode) for mode in ("polling", "webhook")}
        memory = await memory_in_flight(cloud, args.in_flight)
    for mode, speed in speeds.items():
        cpu = {name: speed[f"{name}_cpu_ms_per_image"] for name in ("dispatcher", "postgres", "standins")}
        print(
            f"{mode}: {speed['images_per_s']} images/s; CPU ms per image: dispatcher {cpu['dispatcher']}, "
            f"Postgres {cpu['postgres']}, stand-ins {cpu['standins']}; "
            f"{speed['status_calls_per_image']} status calls per image",
            file=sys.stderr,
        )
    print(f"{memory['peak_rss_mb']} MB peak RSS with {args.in_flight} jobs in flight", file=sys.stderr)
    print(json.dumps({"bench": "throughput", **speeds, **memory}))


if __name__ == "__main__":
    asyncio.run(main())
