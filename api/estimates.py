"""When a batch's jobs should start and finish: from the queue, the live dispatchers' RunPod
capacity (``image_dispatchers``) and the execution times recorded for jobs of the same size.

W workers finish a job of E seconds every E / W seconds. A queued job at place p waits for the
jobs ahead of it that need a worker, the ``in_flight`` jobs the dispatchers hold and the p - 1
queued before it: it gets a worker once ``in_flight + p - W`` of them have finished. A job
submitted to RunPod but not yet running is put in the middle of RunPod's queue; a running one
finishes when its remaining steps are done at the pace its worker reported (``progress``), or
else E after it started (or now, if that has passed). Estimates are None when nothing is known
to base them on: no dispatcher reported workers, or no job of that size has finished.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

UNFINISHED = ("queued", "submitted", "running")


@dataclass(frozen=True)
class Capacity:
    workers: int
    in_flight: int


def job_estimates(
    job: dict[str, Any], capacity: Capacity, execution_s: float | None, now: datetime
) -> tuple[datetime | None, datetime | None]:
    """(estimated start, estimated finish) of one job row, or (None, None)."""
    if job["status"] == "running" and (remaining := _remaining_steps_s(job.get("progress"))) is not None:
        return job["started_at"], now + timedelta(seconds=remaining)
    if job["status"] not in UNFINISHED or execution_s is None:
        return None, None
    run = timedelta(seconds=execution_s)
    if job["status"] == "running" and job["started_at"] is not None:
        return job["started_at"], max(job["started_at"] + run, now)
    if capacity.workers <= 0:
        return None, None
    per_finish = execution_s / capacity.workers
    if job["status"] == "queued" and job["queue_position"] is not None:
        ahead = capacity.in_flight + job["queue_position"] - capacity.workers
    else:  # submitted: somewhere in RunPod's queue
        ahead = (capacity.in_flight - capacity.workers) // 2
    start = now + timedelta(seconds=max(ahead, 0) * per_finish)
    return start, start + run


def with_estimates(
    jobs: list[dict[str, Any]],
    capacity: Capacity,
    execution_s: dict[tuple[str, int, int], float],
    now: datetime,
) -> datetime | None:
    """Add ``estimated_start_at`` and ``estimated_finish_at`` to each job (ISO or None); the
    batch's estimated completion: its last finish, once every unfinished job has one."""
    finishes: list[datetime] = []
    complete = True
    for job in jobs:
        size = (job["quality"], job["width"], job["height"])
        start, finish = job_estimates(job, capacity, execution_s.get(size), now)
        job["estimated_start_at"] = start.isoformat() if start else None
        job["estimated_finish_at"] = finish.isoformat() if finish else None
        if job["status"] in UNFINISHED:
            complete &= finish is not None
            finishes.extend([finish] if finish else [])
    return max(finishes) if complete and finishes else None


def _remaining_steps_s(progress: Any) -> float | None:
    """Seconds the steps not yet done take at the pace of those done, from the worker's report."""
    if not isinstance(progress, dict):
        return None
    step, steps, elapsed_ms = (progress.get(key) for key in ("step", "steps", "elapsed_ms"))
    if not isinstance(step, int) or not isinstance(steps, int) or not isinstance(elapsed_ms, int):
        return None
    if not 0 < step <= steps:
        return None
    return elapsed_ms / 1000 / step * (steps - step)


Query = Callable[[str, dict[str, Any]], Awaitable[list[dict[str, Any]]]]


async def estimation_inputs(
    query: Query, jobs: list[dict[str, Any]]
) -> tuple[Capacity, dict[tuple[str, int, int], float]]:
    """The live capacity and the recorded execution times of these jobs' sizes; ``query`` runs a
    named query (api/sql/queries.sql) and returns its rows as dicts."""
    (capacity_row,) = await query("live_capacity", {}) or [{"workers": 0, "in_flight": 0}]
    sizes = sorted({(job["quality"], job["width"], job["height"]) for job in jobs})
    rows = await query(
        "execution_times",
        {
            "qualities": [size[0] for size in sizes],
            "widths": [size[1] for size in sizes],
            "heights": [size[2] for size in sizes],
        },
    )
    times = {
        (row["quality"], row["width"], row["height"]): row["execution_s"]
        for row in rows
        if row["execution_s"] is not None
    }
    return Capacity(**capacity_row), times


def estimate_event(
    jobs: list[dict[str, Any]], capacity: Capacity, times: dict[tuple[str, int, int], float], now: datetime
) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """An ``estimate`` event's payload for one batch's unfinished jobs, and what it changes with
    (places, states, steps, capacity, and the completion to the half minute: not the clock)."""
    completion = with_estimates(jobs, capacity, times, now)
    payload = {
        "jobs": [
            {
                "job_id": str(job["id"]),
                "position": job["position"],
                "status": job["status"],
                "queue_position": job["queue_position"],
                "progress": job["progress"] if job["status"] == "running" else None,
                "estimated_start_at": job["estimated_start_at"],
                "estimated_finish_at": job["estimated_finish_at"],
            }
            for job in jobs
        ],
        "estimated_completion_at": completion.isoformat() if completion else None,
    }
    shape = (
        tuple((job["id"], job["status"], job["queue_position"], str(job["progress"])) for job in jobs),
        capacity,
        None if completion is None else round(completion.timestamp() / 30),
    )
    return payload, shape
