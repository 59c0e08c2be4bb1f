"""Adaptive polling: when to ask RunPod's /status next, learnt from recent jobs.

Per (quality, width, height) it keeps moving averages of queue time and execution
time. A job is first polled when it has plausibly started and made progress (for a size
nothing was learnt for yet, when it has plausibly left the queue); the worker reports
step progress while running (``{"step", "steps", "elapsed_ms"}``),
from which the finish is predicted and the next poll placed just after it. While
a job waits in the queue the polls back off. With a webhook the poller only
guards against a lost delivery, so its first poll comes late.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from dispatcher.domain import RunPodState, RunPodStatus

Key = tuple[str, int, int]


@dataclass
class Averages:
    queue_s: float
    execution_s: float
    samples: int = 0


@dataclass
class LatencyModel:
    """Exponentially weighted averages of RunPod queue and execution times per key."""

    default_queue_s: float = 0.5
    default_execution_s: float = 3.0
    weight: float = 0.2
    averages: dict[Key, Averages] = field(default_factory=dict)

    def expected(self, key: Key) -> Averages:
        return self.averages.get(key) or Averages(self.default_queue_s, self.default_execution_s)

    def learn(self, key: Key, state: RunPodState) -> None:
        if state.status != RunPodStatus.COMPLETED or state.execution_ms is None:
            return
        queue_s, execution_s = (state.delay_ms or 0) / 1000, state.execution_ms / 1000
        current = self.averages.get(key)
        if current is None:
            self.averages[key] = Averages(queue_s, execution_s, 1)
            return
        w = self.weight
        current.queue_s = (1 - w) * current.queue_s + w * queue_s
        current.execution_s = (1 - w) * current.execution_s + w * execution_s
        current.samples += 1


@dataclass
class PollSchedule:
    """The polling plan of one job, from its submission on (monotonic clock)."""

    model: LatencyModel
    key: Key
    submitted_at: float = field(default_factory=time.monotonic)
    webhook: bool = False
    polls: int = 0
    queued_polls: int = 0

    def first_delay(self) -> float:
        expected = self.model.expected(self.key)
        if self.webhook:  # only a safety net for a lost delivery
            return expected.queue_s + 2 * expected.execution_s + 5
        if expected.samples == 0:
            # Nothing learnt for this size yet: look once the job has plausibly left the queue;
            # the answer (still queued, or running with its step progress) places the next poll.
            return expected.queue_s
        # Late enough that the worker has reported progress, early enough to act on it.
        return expected.queue_s + 0.3 * expected.execution_s

    def next_delay(self, state: RunPodState, now: float | None = None) -> float:
        """Seconds until the next poll after seeing ``state``."""
        now = time.monotonic() if now is None else now
        self.polls += 1
        expected = self.model.expected(self.key)
        if state.status == RunPodStatus.IN_QUEUE:
            self.queued_polls += 1
            return min(max(expected.queue_s, 0.25) * 1.6**self.queued_polls, 15.0)
        finish = self._predicted_finish(state, expected)
        margin = max(0.02 * expected.execution_s, 0.01)
        if finish is not None and finish + margin > now:
            return finish + margin - now
        # Past the prediction: poll briskly, a tenth of the expected run at a time.
        return max(0.1 * expected.execution_s, 0.05)

    def _predicted_finish(self, state: RunPodState, expected: Averages) -> float | None:
        if state.delay_ms is None:
            return None
        started = self.submitted_at + state.delay_ms / 1000
        progress = _progress(state.output)
        if progress is not None:
            step, steps, elapsed_s = progress
            return started + elapsed_s / step * steps
        return started + expected.execution_s


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

    def first_delay(self) -> float:
        return self.interval_s

    def next_delay(self, state: RunPodState, now: float | None = None) -> float:
        self.polls += 1
        return self.interval_s
