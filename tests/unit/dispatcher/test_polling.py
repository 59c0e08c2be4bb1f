"""The adaptive polling plan: when a job's next /status call comes, from what was learnt."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.admission import queue_depth_for
from dispatcher.domain import RunPodState, RunPodStatus
from dispatcher.polling import FixedSchedule, LatencyModel, PollSchedule, QueueView, queued_start

KEY = ("basic", 1024, 576)


def completed(queue_ms: int, execution_ms: int) -> RunPodState:
    return RunPodState("rp", RunPodStatus.COMPLETED, delay_ms=queue_ms, execution_ms=execution_ms)


def test_before_anything_is_learnt_the_first_look_comes_when_the_job_may_have_left_the_queue() -> None:
    model = LatencyModel(default_queue_s=0.5, default_execution_s=3.0)
    assert PollSchedule(model, KEY, submitted_at=0.0).first_delay(now=0.0) == pytest.approx(0.5)


def test_after_learning_the_first_look_comes_when_the_job_has_most_likely_finished() -> None:
    model = LatencyModel(weight=0.5)
    model.learn(KEY, completed(200, 2000))
    model.learn(KEY, completed(400, 4000))
    expected = model.expected(KEY)
    assert (expected.queue_s, expected.execution_s, expected.samples) == pytest.approx((0.3, 3.0, 2))
    # fewer than four executions seen: their average stands for the late quantile
    assert PollSchedule(model, KEY, submitted_at=0.0).first_delay(now=0.0) == pytest.approx(0.3 + 3.0)
    assert model.expected(("high", 1024, 1024)).samples == 0, "each size learns on its own"


def test_the_refill_time_counts_the_slowest_recent_submission_until_it_ages_out() -> None:
    # One submission held by a 429's Retry-After: a worker freeing meanwhile would idle for it,
    # so the queue at RunPod must cover it; the average of 0.02 s round trips would not.
    model = LatencyModel(detection_s=0.01)
    for seconds in [0.02] * 5 + [1.0] + [0.02] * 5:
        model.learn_submit(seconds)
    assert model.refill_s == pytest.approx(1.01)
    assert queue_depth_for(workers=3, refill_s=model.refill_s, execution_s=2.0) == 3
    for _ in range(model.recent_submits.maxlen or 0):
        model.learn_submit(0.02)
    assert model.refill_s == pytest.approx(0.03), "a calm API again: one job waiting"
    assert queue_depth_for(workers=3, refill_s=model.refill_s, execution_s=2.0) == 1


def test_failures_teach_nothing() -> None:
    model = LatencyModel()
    model.learn(KEY, RunPodState("rp", RunPodStatus.FAILED, delay_ms=100, execution_ms=50))
    assert model.expected(KEY).samples == 0


def test_a_queued_job_with_no_estimate_is_polled_less_often_but_at_least_once_an_execution() -> None:
    model = LatencyModel()
    model.learn(KEY, completed(1000, 2000))
    schedule = PollSchedule(model, KEY, submitted_at=0.0)
    delays = [schedule.next_delay(RunPodState("rp", RunPodStatus.IN_QUEUE), now=0.0) for _ in range(12)]
    assert delays == sorted(delays)
    assert delays[0] == pytest.approx(1.6)
    # a worker may free at any moment: a waiting job is never left unseen for longer than a run
    assert delays[-1] == pytest.approx(2.0)


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
    assert PollSchedule(model, KEY, submitted_at=0.0, webhook=True).first_delay(now=0.0) == pytest.approx(9.1)


def test_the_old_services_plan_polls_at_a_fixed_interval_whatever_it_learnt() -> None:
    model = LatencyModel()
    model.learn(KEY, completed(100, 2000))
    schedule = FixedSchedule(model, KEY, submitted_at=0.0, interval_s=3.0)
    assert schedule.first_delay() == 3.0
    assert schedule.next_delay(RunPodState("rp", RunPodStatus.IN_QUEUE), now=1.0) == 3.0


def test_the_first_look_uses_the_late_quantile_of_recent_executions() -> None:
    model = LatencyModel()
    for execution_ms in (1000, 2000, 3000, 4000, 5000):
        model.learn(KEY, completed(0, execution_ms))
    # the 0.8-quantile of five: the fifth, 5 s; a job known to have started at 10 s
    schedule = PollSchedule(model, KEY, submitted_at=9.0, finish_quantile=0.8, expected_start=10.0)
    assert schedule.first_delay(now=9.0) == pytest.approx(1.0 + 5.0)
    assert PollSchedule(model, KEY, submitted_at=9.0, finish_quantile=0.2).first_delay(now=9.0) == (
        pytest.approx(0.0 + 2.0)
    )


def test_a_webhook_teaches_the_model_as_a_poll_does() -> None:
    model = LatencyModel()
    webhook = RunPodState.from_json(
        {"id": "rp", "status": "COMPLETED", "delayTime": 300, "executionTime": 1500}
    )
    model.learn(KEY, webhook)
    assert (model.expected(KEY).queue_s, model.expected(KEY).execution_s) == pytest.approx((0.3, 1.5))


def test_a_queued_job_with_an_expected_start_is_looked_at_once_it_has_most_likely_run() -> None:
    model = LatencyModel()
    model.learn(KEY, completed(0, 2000))
    schedule = PollSchedule(model, KEY, submitted_at=0.0, expected_start=5.0)
    assert schedule.next_delay(RunPodState("rp", RunPodStatus.IN_QUEUE), now=4.0) == pytest.approx(3.0)


def test_the_queue_start_estimate_is_the_place_times_the_execution_over_the_workers() -> None:
    assert queued_start(place=0, workers=3, execution_s=3.0, now=10.0) == pytest.approx(11.0)
    assert queued_start(place=5, workers=3, execution_s=3.0, now=10.0) == pytest.approx(16.0)
    assert queued_start(place=2, workers=0, execution_s=3.0, now=0.0) == pytest.approx(9.0)


def test_a_finished_job_hands_its_worker_to_the_oldest_waiting_job() -> None:
    view = QueueView(workers={"ep": 2})
    view.submitted("ep", "a", at=0.0, idle_worker=True)
    view.submitted("ep", "b", at=0.1, idle_worker=True)
    view.submitted("ep", "c", at=0.2)
    view.submitted("ep", "d", at=0.3)
    assert view.idle_workers("ep") == 0
    assert view.estimated_start("ep", "d", execution_s=2.0, now=1.0) == pytest.approx(1.0 + 2 * 2.0 / 2)
    assert view.estimated_start("ep", "a", execution_s=2.0, now=1.0) is None, "a has started"
    assert view.finished("ep", "b", at=1.8) == "c"
    assert view.started_at("ep", "c") == pytest.approx(1.8)
    assert view.finished("ep", "a", at=2.1) == "d"
    assert view.finished("ep", "c", at=3.0) is None, "nobody is waiting any more"
    # a job submitted after a worker freed did not take that worker's place
    view.submitted("ep", "e", at=5.0)
    assert view.finished("ep", "d", at=4.0) is None


def test_jobs_health_no_longer_counts_are_the_longest_started_ones_not_expected_unfinished() -> None:
    view = QueueView(workers={"ep": 2})
    view.submitted("ep", "a", at=0.0, idle_worker=True)
    view.submitted("ep", "b", at=0.5, idle_worker=True)
    view.submitted("ep", "c", at=1.0)  # waits for a worker
    view.submitted("ep", "late", at=5.0)  # after the question: health could not count it
    assert view.finished_unseen("ep", at_runpod=3, asked_at=4.0) == []
    assert view.finished_unseen("ep", at_runpod=2, asked_at=4.0) == ["a"]
    assert view.finished_unseen("ep", at_runpod=1, asked_at=4.0) == ["a", "b"]
    # a was seen running after the question: it was among those counted, so b is the one
    assert view.finished_unseen("ep", at_runpod=2, asked_at=4.0, expected_unfinished=frozenset({"a"})) == [
        "b"
    ]
    # other users' jobs at the endpoint make the count larger, never a job of ours look finished
    assert view.finished_unseen("ep", at_runpod=9, asked_at=4.0) == []
    assert view.finished_unseen("other", at_runpod=0, asked_at=4.0) == []
    # a job known to have started goes before one believed waiting, however long it has waited
    view.submitted("ep", "d", at=2.0, idle_worker=True)
    assert view.finished_unseen("ep", at_runpod=2, asked_at=4.0) == ["a", "b"]
    assert view.finished_unseen("ep", at_runpod=1, asked_at=4.0) == ["a", "b", "d"]


@given(
    st.lists(st.tuples(st.floats(0, 10), st.booleans()), max_size=8),
    st.integers(0, 10),
    st.floats(0, 12),
)
def test_finished_unseen_never_names_more_than_health_leaves_unaccounted(
    jobs: list[tuple[float, bool]], at_runpod: int, asked_at: float
) -> None:
    view = QueueView(workers={"ep": 4})
    for n, (at, idle) in enumerate(jobs):
        view.submitted("ep", n, at=at, idle_worker=idle)
    named = view.finished_unseen("ep", at_runpod, asked_at)
    asked_before = [n for n, (at, _) in enumerate(jobs) if at < asked_at]
    assert set(named) <= set(asked_before)
    assert len(named) == max(len(asked_before) - at_runpod, 0)
