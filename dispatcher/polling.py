"""Adaptive polling: when to ask RunPod's /status next, from what was learnt and what RunPod says.

Pure: every function here is a function of what was observed (times are monotonic seconds,
passed in), so the plan is unit-tested without a clock or a server.

- ``LatencyModel`` learns, per (quality, width, height), the queue and execution times from
  every finished job, whether a poll or a webhook reported it: a moving average, and the
  recent executions for a late quantile.
- ``QueueView`` knows, per endpoint, the order in which our jobs were submitted and which have
  started, and how many workers the endpoint has (its /health). RunPod's queue is FIFO: a job
  waiting in it starts when a worker frees, behind the jobs submitted before it. So when a
  finished job is detected, the oldest waiting job has started at that job's finish; and until
  then a waiting job's start is estimated from its place in the queue, the learnt execution
  time and the workers (``queued_start``).
- ``PollSchedule`` places each job's polls: a job that has started is polled once it has most
  likely finished (the learnt execution's late quantile after its start), or, when the worker
  reports step progress, just after the finish that progress predicts. A waiting job is polled
  when its estimated start plus that quantile has passed, and never later than one execution
  time after the previous look (a worker may free at any moment). With a webhook the poller
  only guards against a lost delivery, so its first poll comes late.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dispatcher.domain import RunPodState, RunPodStatus

Key = tuple[str, int, int]


@dataclass
class Averages:
    queue_s: float
    execution_s: float
    samples: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=32))

    def execution_quantile(self, q: float) -> float:
        """The q-quantile of the recent executions; the average until there are a few."""
        if len(self.recent) < 4:
            return self.execution_s
        ordered = sorted(self.recent)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


@dataclass
class LatencyModel:
    """Exponentially weighted averages of RunPod queue and execution times per key."""

    default_queue_s: float = 0.5
    default_execution_s: float = 3.0
    weight: float = 0.2
    averages: dict[Key, Averages] = field(default_factory=dict)
    # From a job's finish at RunPod to the dispatcher knowing it (a poll's lateness, a webhook's
    # transit), and a submission's round trip (429 waits and retries included): together, how
    # long a freed worker waits for a next job if none is queued for it (``refill_s``).
    detection_s: float = 0.25
    default_submit_s: float = 0.05
    recent_submits: deque[float] = field(default_factory=lambda: deque(maxlen=16))

    def expected(self, key: Key) -> Averages:
        return self.averages.get(key) or Averages(self.default_queue_s, self.default_execution_s)

    def typical_execution_s(self) -> float:
        """The average execution over every size seen (the default before any)."""
        if not self.averages:
            return self.default_execution_s
        return sum(a.execution_s for a in self.averages.values()) / len(self.averages)

    @property
    def submit_s(self) -> float:
        """The slowest of the recent submissions' round trips. Not their average: a 429 holds
        every submission for its Retry-After, and a worker that frees meanwhile idles for all
        of it unless the queue at RunPod covers it; one job waiting there too many costs a
        newcomer a fraction of an execution, while a throttled API calls for the deeper queue."""
        return max(self.recent_submits, default=self.default_submit_s)

    @property
    def refill_s(self) -> float:
        return self.detection_s + self.submit_s

    def learn_detection(self, seconds: float) -> None:
        self.detection_s = (1 - self.weight) * self.detection_s + self.weight * max(seconds, 0.0)

    def learn_submit(self, seconds: float) -> None:
        self.recent_submits.append(max(seconds, 0.0))

    def learn(self, key: Key, state: RunPodState) -> None:
        if state.status != RunPodStatus.COMPLETED or state.execution_ms is None:
            return
        queue_s, execution_s = (state.delay_ms or 0) / 1000, state.execution_ms / 1000
        current = self.averages.get(key)
        if current is None:
            current = self.averages[key] = Averages(queue_s, execution_s, 0)
        else:
            w = self.weight
            current.queue_s = (1 - w) * current.queue_s + w * queue_s
            current.execution_s = (1 - w) * current.execution_s + w * execution_s
        current.samples += 1
        current.recent.append(execution_s)


def queued_start(place: int, workers: int, execution_s: float, now: float) -> float:
    """When a job waiting behind ``place`` others (all busy workers) should start: the workers
    free one by one, on average ``execution_s / workers`` apart, FIFO."""
    return now + (place + 1) * execution_s / max(workers, 1)


@dataclass
class _Waiting:
    submitted_at: float
    started_at: float | None = None


@dataclass
class QueueView:
    """Our jobs at each endpoint in submission order, which have started, and the workers."""

    jobs: dict[str, dict[Any, _Waiting]] = field(default_factory=dict)  # endpoint -> job -> ...
    workers: dict[str, int] = field(default_factory=dict)  # endpoint -> running + idle workers

    def submitted(self, endpoint: str, job: Any, at: float, idle_worker: bool = False) -> None:
        """A job entered the endpoint's queue; with a worker idle then, it started at once."""
        self.jobs.setdefault(endpoint, {})[job] = _Waiting(at, at if idle_worker else None)

    def started(self, endpoint: str, job: Any, at: float) -> None:
        waiting = self.jobs.get(endpoint, {}).get(job)
        if waiting is not None and waiting.started_at is None:
            waiting.started_at = at

    def started_at(self, endpoint: str, job: Any) -> float | None:
        waiting = self.jobs.get(endpoint, {}).get(job)
        return None if waiting is None else waiting.started_at

    def finished(self, endpoint: str, job: Any, at: float) -> Any | None:
        """``job`` finished at ``at``: the oldest job still waiting then took its worker (FIFO).
        Returns that job, now known to have started at ``at``, or None."""
        jobs = self.jobs.get(endpoint, {})
        jobs.pop(job, None)
        waiting = [
            (w.submitted_at, j) for j, w in jobs.items() if w.started_at is None and w.submitted_at <= at
        ]
        if not waiting:
            return None
        _, oldest = min(waiting, key=lambda item: item[0])
        jobs[oldest].started_at = at
        return oldest

    def finished_unseen(
        self,
        endpoint: str,
        at_runpod: int,
        asked_at: float,
        expected_unfinished: frozenset[Any] = frozenset(),
    ) -> list[Any]:
        """The jobs most likely finished without our knowing, from a /health asked at
        ``asked_at`` that counted ``at_runpod`` jobs queued or in progress (everyone's: at least
        ours). Of our jobs submitted before the question, that many more than it counts have
        finished; ``expected_unfinished`` were seen unfinished, and are expected to be still then.
        The likeliest of the others: those known to have started, longest first, then the
        waiting ones in submission order (one of them may have had its turn unnoticed)."""
        held = [
            (w.started_at is None, w.submitted_at if w.started_at is None else w.started_at, j)
            for j, w in self.jobs.get(endpoint, {}).items()
            if w.submitted_at < asked_at
        ]
        candidates = sorted(
            (item for item in held if item[2] not in expected_unfinished), key=lambda item: item[:2]
        )
        unseen = len(held) - at_runpod
        return [j for _, _, j in candidates[: max(unseen, 0)]]

    def forget(self, endpoint: str, job: Any) -> None:
        self.jobs.get(endpoint, {}).pop(job, None)

    def idle_workers(self, endpoint: str) -> int:
        """Workers with none of our jobs (as far as we know): a job submitted now starts at once."""
        known = self.workers.get(endpoint)
        if known is None:
            return 0
        busy = sum(1 for w in self.jobs.get(endpoint, {}).values() if w.started_at is not None)
        return max(known - busy, 0)

    def estimated_start(self, endpoint: str, job: Any, execution_s: float, now: float) -> float | None:
        """A waiting job's start, from its place behind our other waiting jobs; None if it has
        started (or is not ours)."""
        jobs = self.jobs.get(endpoint, {})
        mine = jobs.get(job)
        if mine is None or mine.started_at is not None:
            return None
        place = sum(1 for w in jobs.values() if w.started_at is None and w.submitted_at < mine.submitted_at)
        workers = self.workers.get(endpoint) or sum(1 for w in jobs.values() if w.started_at is not None)
        return queued_start(place, workers, execution_s, now)


@dataclass
class PollSchedule:
    """The polling plan of one job, from its submission on (monotonic clock).

    ``finish_quantile``: how late in the learnt execution times the first look at a running job
    comes. Higher: fewer polls that find it still running, a later look at one that finished
    early. ``expected_start``: when the job started or should start, as the QueueView knows.
    ``health_watch_s``: how often the endpoint's /health is read and names the jobs that have
    finished (QueueView.finished_unseen), which are then looked at at once: the plan is only a
    backstop then, each of its looks that long later (0: no such watch)."""

    model: LatencyModel
    key: Key
    submitted_at: float = field(default_factory=time.monotonic)
    webhook: bool = False
    finish_quantile: float = 0.6
    expected_start: float | None = None
    health_watch_s: float = 0.0
    polls: int = 0
    queued_polls: int = 0

    def first_delay(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        expected = self.model.expected(self.key)
        start = (
            self.expected_start if self.expected_start is not None else self.submitted_at + expected.queue_s
        )
        if self.webhook:  # only a safety net for a lost delivery
            return start - now + 2 * expected.execution_s + 5
        if expected.samples == 0:
            # Nothing learnt for this size yet: look once the job has plausibly left the queue;
            # the answer (still queued, or running with its step progress) places the next poll.
            return start - now
        return self._late_finish(start, expected) + self.health_watch_s - now

    def next_delay(self, state: RunPodState, now: float | None = None) -> float:
        """Seconds until the next poll after seeing ``state``."""
        now = time.monotonic() if now is None else now
        self.polls += 1
        expected = self.model.expected(self.key)
        if state.status == RunPodStatus.IN_QUEUE:
            self.queued_polls += 1
            return self.delay_while_queued(now)
        finish = self._predicted_finish(state, expected)
        margin = max(0.02 * expected.execution_s, 0.01)
        if finish is not None and finish + margin > now:
            return finish + margin + self.health_watch_s - now
        # Past the prediction: poll briskly, a tenth of the expected run at a time (or, watched,
        # once the next /health reads or two have had the chance to name it).
        return max(0.1 * expected.execution_s, 0.05, 2 * self.health_watch_s)

    def delay_while_queued(self, now: float) -> float:
        """A job still in RunPod's queue: look once it has most likely run, from its estimated
        start; never later than one execution time from now, nor sooner than a quarter second
        (each later by ``health_watch_s`` when watched)."""
        expected = self.model.expected(self.key)
        ceiling = max(expected.execution_s, 0.25)
        if self.expected_start is not None and self.expected_start > now - ceiling:
            delay = min(max(self._late_finish(self.expected_start, expected) - now, 0.25), 2 * ceiling)
        else:
            delay = min(max(expected.queue_s, 0.25) * 1.6**self.queued_polls, ceiling)
        return delay + self.health_watch_s

    def _late_finish(self, start: float, expected: Averages) -> float:
        return start + expected.execution_quantile(self.finish_quantile)

    def _predicted_finish(self, state: RunPodState, expected: Averages) -> float | None:
        if state.delay_ms is None:
            return None
        started = self.submitted_at + state.delay_ms / 1000
        progress = _progress(state.output)
        if progress is not None:
            step, steps, elapsed_s = progress
            return started + elapsed_s / step * steps
        return self._late_finish(started, expected)


def _progress(output: Any) -> tuple[int, int, float] | None:
    if not isinstance(output, dict):
        return None
    step, steps, elapsed_ms = output.get("step"), output.get("steps"), output.get("elapsed_ms")
    if not (isinstance(step, int) and isinstance(steps, int) and isinstance(elapsed_ms, int | float)):
        return None
    if step <= 0 or steps < step:
        return None
    return step, steps, elapsed_ms / 1000


@dataclass
class FixedSchedule(PollSchedule):
    """The old services' plan: the same interval, whatever the job. Kept for comparison."""

    interval_s: float = 3.0

    def first_delay(self, now: float | None = None) -> float:
        return self.interval_s

    def next_delay(self, state: RunPodState, now: float | None = None) -> float:
        self.polls += 1
        return self.interval_s
