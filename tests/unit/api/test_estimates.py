"""Start and finish estimates: the arithmetic of W workers and E-second jobs, and what is None."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from api.estimates import Capacity, job_estimates, with_estimates

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
SIZE = ("basic", 1024, 576)


def queued(place: int) -> dict[str, Any]:
    return {
        "status": "queued",
        "queue_position": place,
        "started_at": None,
        "quality": "basic",
        "width": 1024,
        "height": 576,
    }


def test_a_queued_job_waits_for_the_finishes_ahead_of_it() -> None:
    # 4 workers busy with 4 jobs of 2 s: the first queued job starts at the first finish
    start, finish = job_estimates(queued(1), Capacity(workers=4, in_flight=4), 2.0, NOW)
    assert (start, finish) == (NOW + timedelta(seconds=0.5), NOW + timedelta(seconds=2.5))
    # an idle worker: at once
    assert job_estimates(queued(1), Capacity(workers=4, in_flight=2), 2.0, NOW)[0] == NOW


def test_a_running_job_finishes_an_execution_after_it_started_or_now() -> None:
    running = {
        **queued(1),
        "status": "running",
        "queue_position": None,
        "started_at": NOW - timedelta(seconds=1),
    }
    assert job_estimates(running, Capacity(0, 0), 3.0, NOW)[1] == NOW + timedelta(seconds=2)
    assert job_estimates(running, Capacity(0, 0), 0.5, NOW)[1] == NOW


def test_nothing_is_estimated_without_workers_or_a_recorded_time() -> None:
    assert job_estimates(queued(1), Capacity(workers=0, in_flight=0), 2.0, NOW) == (None, None)
    assert job_estimates(queued(1), Capacity(workers=2, in_flight=0), None, NOW) == (None, None)
    jobs = [queued(1), {**queued(2), "width": 576, "height": 1024}]
    assert with_estimates(jobs, Capacity(2, 0), {SIZE: 1.0}, NOW) is None  # one size never ran
    assert jobs[1]["estimated_finish_at"] is None


@given(
    workers=st.integers(1, 64), in_flight=st.integers(0, 128), places=st.integers(1, 50), e=st.floats(0.1, 60)
)
def test_later_places_never_start_earlier_and_the_batch_ends_with_its_last_job(
    workers: int, in_flight: int, places: int, e: float
) -> None:
    jobs = [queued(place) for place in range(1, places + 1)]
    completion = with_estimates(jobs, Capacity(workers, in_flight), {SIZE: e}, NOW)
    starts = [datetime.fromisoformat(job["estimated_start_at"]) for job in jobs]
    assert starts == sorted(starts)
    assert starts[0] >= NOW
    assert completion == datetime.fromisoformat(jobs[-1]["estimated_finish_at"])
