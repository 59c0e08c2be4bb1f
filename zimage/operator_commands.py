"""``zimage submit``, ``zimage status`` and ``zimage retry``: the operator's commands.

submit goes through the app, exactly as the frontend does (generate-images, then its SSE
stream); status and retry read and write the database directly (DATABASE_URL).

Exit codes: 0 done; 1 the work failed (a batch with failed images, a batch not found);
2 a configuration or usage error; 3 the app refused the request or could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from kernel.queries import load_queries

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API = 0, 1, 2, 3
OPERATOR_QUERIES = load_queries(Path(__file__).parent / "sql" / "operator.sql")


def add_operator_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    submit = commands.add_parser(
        "submit",
        help="submit prompts through the app and follow them with a progress bar",
        description="POST the prompts to {ZIMAGE_API_URL}/functions/v1/generate-images with ZIMAGE_TOKEN "
        "(default: SUPABASE_SERVICE_ROLE_KEY), follow the batch's progress stream, and print the image URLs. "
        "Exit 0 when every image was stored, 1 when some failed, 3 when the app refused or was unreachable.",
    )
    submit.add_argument("prompt", nargs="*", help="prompts, one image each")
    submit.add_argument(
        "--file",
        type=Path,
        help="prompts from a file: one per line, or a .json list (of strings or of {index, prompt, "
        "startTime, endTime})",
    )
    submit.add_argument(
        "--quality", choices=["basic", "high"], default="basic", help="basic: 9 steps; high: 16"
    )
    submit.add_argument("--aspect-ratio", choices=["16:9", "1:1", "9:16"], default="16:9")
    submit.add_argument("--project-id", help="store under {project-id}/images/ (with timed prompts)")
    submit.add_argument("--seed", type=int, help="a fixed seed (identical requests then reuse the image)")
    submit.add_argument(
        "--format", choices=["png", "webp", "jpeg"], default="png", help="png (lossless), webp or jpeg"
    )
    submit.add_argument(
        "--output-quality", type=int, help="webp and jpeg: 1-100 (default 90); smaller files, more loss"
    )
    submit.add_argument("--json", action="store_true", help="print one JSON object (no progress bar)")
    submit.set_defaults(run=run_submit)

    status = commands.add_parser(
        "status",
        help="a batch's jobs, or the queue at a glance",
        description="With a batch id: each job's state, URL or error, attempts and queue position (exit 1 if "
        "the batch does not exist). Without: jobs by state, the oldest queued job's age, and what each "
        "dispatcher holds in flight. Reads DATABASE_URL.",
    )
    status.add_argument("batch_id", nargs="?", type=UUID, help="a batch id")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(run=run_status)

    retry = commands.add_parser(
        "retry",
        help="requeue failed jobs (by batch, job ids, or failed since a time)",
        description="Requeue failed jobs; the filters combine and at least one is required. Each job starts "
        "again from attempt 0 and its batch's followers see it come back. Writes DATABASE_URL.",
    )
    retry.add_argument("--batch", type=UUID, help="failed jobs of this batch")
    retry.add_argument("--job", type=UUID, action="append", help="this failed job (repeatable)")
    retry.add_argument(
        "--since", type=_since, help="failed since: an ISO time (2026-11-24T09:00Z) or an age (30m, 2h, 1d)"
    )
    retry.set_defaults(run=run_retry)

    cancel = commands.add_parser(
        "cancel",
        help="cancel a batch's unfinished jobs, or some jobs",
        description="Cancel the queued and in-flight jobs of a batch and/or the given jobs, whoever's they "
        "are (an operator's tool; users cancel through POST /functions/v1/cancel). Jobs in flight have their "
        "RunPod job cancelled by their dispatcher at its next lease renewal. Writes DATABASE_URL.",
    )
    cancel.add_argument("--batch", type=UUID, help="this batch's unfinished jobs")
    cancel.add_argument("--job", type=UUID, action="append", help="this job (repeatable)")
    cancel.set_defaults(run=run_cancel)


def run_submit(args: argparse.Namespace) -> int:
    from api.client import ApiError, ProgressBar, submit
    from api.settings import ClientSettings

    prompts = _prompts(args)
    if not prompts:
        print("zimage submit: give prompts as arguments or with --file", file=sys.stderr)
        return EXIT_USAGE
    settings = ClientSettings()
    token = settings.token()
    if token is None:
        print("zimage submit: set ZIMAGE_TOKEN (or SUPABASE_SERVICE_ROLE_KEY)", file=sys.stderr)
        return EXIT_USAGE
    body: dict[str, Any] = {"prompts": prompts, "quality": args.quality, "aspectRatio": args.aspect_ratio}
    if args.project_id:
        body["projectId"] = args.project_id
    if args.seed is not None:
        body["seed"] = args.seed
    if args.format != "png":
        body["format"] = args.format
    if args.output_quality is not None:
        body["output_quality"] = args.output_quality
    bar = None if args.json else ProgressBar(f"{len(prompts)} image(s)")
    try:
        complete = asyncio.run(submit(settings.zimage_api_url, token, body, bar))
    except ApiError as error:
        print(f"zimage submit: {error}", file=sys.stderr)
        return EXIT_API
    if args.json:
        print(
            json.dumps({key: complete[key] for key in ("batch_id", "success", "images", "total", "failed")})
        )
    else:
        print(f"batch {complete['batch_id']}: {len(complete['images'])} of {complete['total']} stored")
    return EXIT_OK if complete["failed"] == 0 else EXIT_FAILED


def _prompts(args: argparse.Namespace) -> list[Any]:
    prompts: list[Any] = list(args.prompt)
    if args.file is not None:
        text = args.file.read_text()
        if args.file.suffix == ".json":
            prompts.extend(json.loads(text))
        else:
            prompts.extend(line.strip() for line in text.splitlines() if line.strip())
    return prompts


def run_status(args: argparse.Namespace) -> int:
    return asyncio.run(_status(args.batch_id, args.json))


async def _status(batch_id: UUID | None, as_json: bool) -> int:
    from api.batches import batch_snapshot
    from kernel.settings import load_database_settings

    settings = load_database_settings()
    async with await psycopg.AsyncConnection.connect(str(settings.database_url), autocommit=True) as conn:
        if batch_id is not None:
            snapshot = await batch_snapshot(conn, batch_id)
            if snapshot is None:
                print(f"zimage status: batch {batch_id} not found", file=sys.stderr)
                return EXIT_FAILED
            print(json.dumps(snapshot) if as_json else _describe_batch(snapshot))
            return EXIT_OK
        queue = await _queue(conn)
    print(json.dumps(queue) if as_json else _describe_queue(queue))
    return EXIT_OK


async def _queue(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(OPERATOR_QUERIES["jobs_by_state"])
        by_state = {row["status"]: row["n"] for row in await cursor.fetchall()}
        await cursor.execute(OPERATOR_QUERIES["queued_age"])
        queued = await cursor.fetchone()
        await cursor.execute(OPERATOR_QUERIES["in_flight_by_dispatcher"])
        in_flight = {str(row["lease_owner"]): row["n"] for row in await cursor.fetchall()}
    age = queued["age_s"] if queued else None
    return {
        "jobs_by_state": by_state,
        "queued_due": queued["due"] if queued else 0,
        "oldest_queued_age_s": round(float(age), 1) if age is not None else None,
        "in_flight_by_dispatcher": in_flight,
    }


def _describe_queue(queue: dict[str, Any]) -> str:
    states = ", ".join(f"{state} {n}" for state, n in queue["jobs_by_state"].items()) or "no jobs"
    lines = [f"jobs: {states}"]
    if queue["oldest_queued_age_s"] is not None:
        lines.append(
            f"queued: {queue['queued_due']} due now; the oldest waits for {queue['oldest_queued_age_s']} s"
        )
    for owner, n in queue["in_flight_by_dispatcher"].items():
        lines.append(f"in flight on {owner}: {n}")
    return "\n".join(lines)


def _describe_batch(snapshot: dict[str, Any]) -> str:
    counts = ", ".join(f"{state} {n}" for state, n in snapshot["counts"].items())
    lines = [f"batch {snapshot['batch_id']} ({snapshot['total']} images: {counts})"]
    for job in snapshot["jobs"]:
        detail = (
            job["url"]
            or job["error"]
            or (f"#{job['queue_position']} in queue" if job["queue_position"] else "")
        )
        lines.append(f"  {job['position'] + 1:>3} {job['status']:<9} attempts {job['attempts']}  {detail}")
    return "\n".join(lines)


def run_retry(args: argparse.Namespace) -> int:
    if args.batch is None and not args.job and args.since is None:
        print("zimage retry: give --batch, --job or --since", file=sys.stderr)
        return EXIT_USAGE
    from kernel.settings import load_database_settings

    settings = load_database_settings()
    with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
        row = conn.execute(
            OPERATOR_QUERIES["requeue_failed"],
            {"batch_id": args.batch, "job_ids": args.job, "since": args.since},
        ).fetchone()
    print(f"requeued {row[0] if row else 0} failed job(s)")
    return EXIT_OK


def run_cancel(args: argparse.Namespace) -> int:
    if args.batch is None and not args.job:
        print("zimage cancel: give --batch or --job", file=sys.stderr)
        return EXIT_USAGE
    from kernel.settings import load_database_settings

    settings = load_database_settings()
    with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
        row = conn.execute(
            OPERATOR_QUERIES["cancel"], {"batch_id": args.batch, "job_ids": args.job}
        ).fetchone()
    print(f"cancelled {row[0] if row else 0} job(s)")
    return EXIT_OK


_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def _since(value: str) -> datetime:
    if match := _AGE.match(value):
        seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: not an ISO time or an age like 30m") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
