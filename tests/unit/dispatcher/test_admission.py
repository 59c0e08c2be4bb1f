"""GPU-aware admission: how many jobs are kept submitted, from what /health says."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dispatcher.admission import EndpointCapacity, admitted, newcomer_room, queue_depth_for

HEALTH = {
    "jobs": {"completed": 10, "failed": 0, "inProgress": 3, "inQueue": 2, "retried": 0},
    "workers": {"idle": 1, "initializing": 2, "ready": 4, "running": 3, "throttled": 0, "unhealthy": 0},
}


def test_health_is_read_as_runpod_writes_it() -> None:
    capacity = EndpointCapacity.from_health(HEALTH)
    assert capacity == EndpointCapacity(idle=1, running=3, initializing=2, in_queue=2, in_progress=3)
    assert capacity.workers == 4


def test_one_job_per_worker_that_can_take_one_and_the_queue_depth_per_endpoint() -> None:
    assert admitted([EndpointCapacity.from_health(HEALTH)], queue_depth=1) == 4 + 2 + 1
    assert admitted([EndpointCapacity(running=2), EndpointCapacity(idle=1)], queue_depth=2) == 3 + 2 * 2


def test_the_default_depth_covers_the_workers_that_free_while_a_finish_is_being_noticed() -> None:
    assert queue_depth_for(workers=3, refill_s=0.02, execution_s=2.0) == 1  # a webhook
    assert queue_depth_for(workers=3, refill_s=0.6, execution_s=2.0) == 2  # polling
    assert queue_depth_for(workers=8, refill_s=0.8, execution_s=2.0) == 4
    assert queue_depth_for(workers=2, refill_s=30.0, execution_s=1.0) == 2, "never more than workers"
    assert queue_depth_for(workers=0, refill_s=0.5, execution_s=2.0) == 1, "scaled to zero: wake it"
    capacity = [EndpointCapacity(running=8)]
    assert admitted(capacity, None, refill_s=0.8, execution_s=2.0) == 8 + 4
    assert admitted(capacity, 0, refill_s=0.8, execution_s=2.0) == 8, "an explicit depth wins"


def test_an_endpoint_scaled_to_zero_still_gets_its_queue_depth_so_the_autoscaler_wakes_it() -> None:
    assert admitted([EndpointCapacity()], queue_depth=1) == 1
    assert admitted([EndpointCapacity()], queue_depth=0) == 0


@given(
    health=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(), lambda inner: st.dictionaries(st.text(), inner)
    )
)
def test_any_health_body_gives_a_capacity_of_non_negative_counts(health: object) -> None:
    for body in (health, {"workers": health, "jobs": health}):
        capacity = EndpointCapacity.from_health(body)
        assert min(capacity.idle, capacity.running, capacity.initializing, capacity.in_queue) >= 0


def test_a_newcomer_gets_one_extra_slot_per_worker_and_never_past_max_in_flight() -> None:
    assert newcomer_room(held=5, admitted=5, workers=3, max_in_flight=64) == 3
    assert newcomer_room(held=7, admitted=5, workers=3, max_in_flight=64) == 1, "two extras already held"
    assert newcomer_room(held=8, admitted=5, workers=3, max_in_flight=64) == 0
    assert newcomer_room(held=5, admitted=5, workers=3, max_in_flight=6) == 1
    assert newcomer_room(held=0, admitted=0, workers=0, max_in_flight=64) == 1, (
        "scaled to zero: one, to wake it"
    )
