"""When a batch's jobs should start and finish: from the queue, the live dispatchers' RunPod
capacity (``image_dispatchers``) and the execution times recorded for jobs of the same size.

W workers finish a job of E seconds every E / W seconds. A queued job at place p waits for the
jobs ahead of it that need a worker, the ``in_flight`` jobs the dispatchers hold and the p - 1
queued before it: it gets a worker once ``in_flight + p - W`` of them have finished. A job
submitted to RunPod but not yet running is put in the middle of RunPod's queue; a running one
finishes E after it started (or now, if that has passed). Estimates are None when nothing
is known to base them on: no dispatcher reported workers, or no job of that size has finished.
"""

from __future__ import annotations

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
