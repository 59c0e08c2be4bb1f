"""The adaptive polling plan: when a job's next /status call comes, from what was learnt."""

from __future__ import annotations

import pytest

from dispatcher.domain import RunPodState, RunPodStatus
from dispatcher.polling import FixedSchedule, LatencyModel, PollSchedule

KEY = ("basic", 1024, 576)


def completed(queue_ms: int, execution_ms: int) -> RunPodState:
    return RunPodState("rp", RunPodStatus.COMPLETED, delay_ms=queue_ms, execution_ms=execution_ms)


def test_before_anything_is_learnt_the_first_look_comes_when_the_job_may_have_left_the_queue() -> None:
    model = LatencyModel(default_queue_s=0.5, default_execution_s=3.0)
    assert PollSchedule(model, KEY, submitted_at=0.0).first_delay() == pytest.approx(0.5)


def test_after_learning_the_first_look_comes_when_progress_can_be_read() -> None:
    model = LatencyModel(weight=0.5)
    model.learn(KEY, completed(200, 2000))
    model.learn(KEY, completed(400, 4000))
    expected = model.expected(KEY)
    assert (expected.queue_s, expected.execution_s, expected.samples) == pytest.approx((0.3, 3.0, 2))
    assert PollSchedule(model, KEY, submitted_at=0.0).first_delay() == pytest.approx(0.3 + 0.9)
    assert model.expected(("high", 1024, 1024)).samples == 0, "each size learns on its own"


def test_failures_teach_nothing() -> None:
    model = LatencyModel()
    model.learn(KEY, RunPodState("rp", RunPodStatus.FAILED, delay_ms=100, execution_ms=50))
    assert model.expected(KEY).samples == 0


def test_a_queued_job_is_polled_less_and_less_often_up_to_a_cap() -> None:
    model = LatencyModel()
    model.learn(KEY, completed(1000, 2000))
    schedule = PollSchedule(model, KEY, submitted_at=0.0)
    delays = [schedule.next_delay(RunPodState("rp", RunPodStatus.IN_QUEUE), now=0.0) for _ in range(12)]
    assert delays == sorted(delays)
    assert delays[0] == pytest.approx(1.6)
    assert delays[-1] == 15.0


def test_a_running_job_is_polled_just_after_the_finish_its_progress_predicts() -> None:
    model = LatencyModel()
    model.learn(KEY, completed(100, 2000))
    schedule = PollSchedule(model, KEY, submitted_at=10.0)
    # started 0.5 s after submission; 3 of 9 steps in 1.2 s: done 2.4 s later
    running = RunPodState(
        "rp", RunPodStatus.IN_PROGRESS, delay_ms=500, output={"step": 3, "steps": 9, "elapsed_ms": 1200}
    )
    delay = schedule.next_delay(running, now=11.7)
    finish = 10.0 + 0.5 + 3.6
    assert finish - 11.7 < delay <= finish - 11.7 + 0.05


def test_past_the_prediction_it_polls_briskly() -> None:
    model = LatencyModel()
    model.learn(KEY, completed(100, 2000))
    schedule = PollSchedule(model, KEY, submitted_at=0.0)
    late = RunPodState(
        "rp", RunPodStatus.IN_PROGRESS, delay_ms=100, output={"step": 9, "steps": 9, "elapsed_ms": 2000}
    )
    assert schedule.next_delay(late, now=60.0) == pytest.approx(0.2)


def test_with_a_webhook_polling_is_only_a_late_safety_net() -> None:
    model = LatencyModel()
    model.learn(KEY, completed(100, 2000))
    assert PollSchedule(model, KEY, submitted_at=0.0, webhook=True).first_delay() == pytest.approx(9.1)


def test_the_old_services_plan_polls_at_a_fixed_interval_whatever_it_learnt() -> None:
    model = LatencyModel()
    model.learn(KEY, completed(100, 2000))
    schedule = FixedSchedule(model, KEY, submitted_at=0.0, interval_s=3.0)
    assert schedule.first_delay() == 3.0
    assert schedule.next_delay(RunPodState("rp", RunPodStatus.IN_QUEUE), now=1.0) == 3.0
