"""GPU-aware admission: how many jobs to keep submitted to RunPod, from its live capacity.

Jobs not yet submitted stay queued in Postgres, where the claim's fairness between users,
cancellation and failover still apply; RunPod's own queue is one FIFO for everyone. So the
dispatcher keeps at most, per endpoint, one job per worker that can run one (running, idle
or initializing, as the endpoint's /health reports them) plus ``queue_depth`` waiting.

The trade-off is the queue depth. RunPod's autoscaler adds workers when requests wait in the
endpoint's queue, so a queue it can see is the only way to ask for more GPUs: with depth 0 an
endpoint scaled to zero would never wake, and one at N workers would never grow. Every job
waiting there, though, is a job a newcomer's request waits behind: a user asking for one image
while another has a hundred queued waits for one execution time plus ``queue_depth`` of them.
The default depth keeps both: demand is always visible, and a worker that frees finds its next
job already there rather than idling until the dispatcher notices the finish and submits
another. So it covers the finishes that happen while the queue is being refilled: one job, plus
one per worker finishing within the learnt refill time (noticing a finish, then a submission's
round trip: the slowest recent one, ``LatencyModel.submit_s``; ``queue_depth_for``). With a
webhook and a calm API that is milliseconds: one waiting job. Polling notices later, and a
throttled API (429s) submits later (bench/regimes.py measures both), so more wait, the more
so the more workers there are.

One exception keeps a newcomer from waiting for a slot to free at all: a user with nothing in
flight has their first job submitted even when the endpoints are full (``newcomer_room``), up
to one such extra per worker. It joins RunPod's queue behind only the few jobs admission keeps
there, so a user asking for one image while another has a hundred queued waits about one
execution (plus the queue's) rather than for one of the hundred to finish and be noticed first.

Replicas share the endpoints: each publishes the jobs it holds as often as it reads /health
(``image_dispatchers``) and admits what the capacity leaves beyond the others' (claiming.py), so
two replicas keep one queue's depth at RunPod, not two. What a replica learns of the others is
up to a /health interval old: replicas that start together, or one whose share grows, may briefly
hold more between them, and a replica killed outright keeps its share for the 30 s its row is
believed (its jobs are still at RunPod meanwhile, unless RunPod lost them too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EndpointCapacity:
    """What an endpoint's /health says about its workers and queue."""

    idle: int = 0
    running: int = 0
    initializing: int = 0
    in_queue: int = 0
    in_progress: int = 0

    @classmethod
    def from_health(cls, health: Any) -> EndpointCapacity:
        """Whatever the body holds: a count that is missing or not a natural number is 0."""

        def part(name: str) -> dict[str, Any]:
            value = health.get(name) if isinstance(health, dict) else None
            return value if isinstance(value, dict) else {}

        workers, jobs = part("workers"), part("jobs")

        def count(source: dict[str, Any], name: str) -> int:
            value = source.get(name, 0)
            return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

        return cls(
            idle=count(workers, "idle"),
            running=count(workers, "running"),
            initializing=count(workers, "initializing"),
            in_queue=count(jobs, "inQueue"),
            in_progress=count(jobs, "inProgress"),
        )

    @property
    def workers(self) -> int:
        """Workers that run jobs now (running or idle)."""
        return self.running + self.idle


def queue_depth_for(workers: int, refill_s: float, execution_s: float) -> int:
    """Jobs to keep waiting at an endpoint: one, and one more for each worker expected to free
    while the queue is refilled (``workers`` finish every ``execution_s``, spread out)."""
    return min(1 + round(workers * refill_s / max(execution_s, 0.05)), max(workers, 1))


def newcomer_room(held: int, admitted: int, workers: int, max_in_flight: int) -> int:
    """How many users with nothing in flight may have a job submitted now, beyond ``admitted``
    (``held`` jobs held now): one extra per worker at most, and never past ``max_in_flight``."""
    extra = max(held - admitted, 0)
    return max(min(max(workers, 1) - extra, max_in_flight - held), 0)


def admitted(
    capacities: list[EndpointCapacity],
    queue_depth: int | None,
    refill_s: float = 0.0,
    execution_s: float = 1.0,
) -> int:
    """How many jobs to keep submitted over these endpoints: a job for every worker that can
    take one soon (running, idle, initializing) and a queue per endpoint (``queue_depth``, or
    by default what covers the refill time)."""
    return sum(
        c.workers
        + c.initializing
        + (queue_depth if queue_depth is not None else queue_depth_for(c.workers, refill_s, execution_s))
        for c in capacities
    )
