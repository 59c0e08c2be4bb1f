"""How RunPodClient maps RunPod's answers and transport failures onto the domain's errors, and
which of them it retries: httpx.MockTransport answers, nothing is listening anywhere."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.domain import (
    RunPodError,
    RunPodJobGone,
    RunPodOutcomeUnknown,
    RunPodRejected,
    RunPodStatus,
    RunPodThrottled,
    RunPodUnauthorized,
    RunPodUnavailable,
)
from dispatcher.runpod import RetryPolicy, RunPodClient, backoff_s

POLICY = RetryPolicy(attempts=3, initial_wait_s=0.001, max_wait_s=0.002, max_retry_after_s=0.01)
Handler = Callable[[httpx.Request], httpx.Response]


class Recorded:
    """A RunPodClient over a MockTransport that answers with ``handler`` and counts the calls."""

    def __init__(self, handler: Handler) -> None:
        self.calls: list[httpx.Request] = []

        def record(request: httpx.Request) -> httpx.Response:
            self.calls.append(request)
            return handler(request)

        self.http = httpx.AsyncClient(transport=httpx.MockTransport(record))
        self.client = RunPodClient(self.http, "https://api.runpod.test/v2", "rp-key", POLICY)


def answer(status: int, body: object = None, **headers: str) -> Handler:
    return lambda _request: httpx.Response(status, json=body if body is not None else {}, headers=headers)


def fail_with(error: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error("injected", request=request)

    return handler


async def test_a_status_answer_is_parsed_with_the_key_sent() -> None:
    runpod = Recorded(answer(200, {"id": "rp-1", "status": "IN_PROGRESS", "delayTime": 120}))
    state = await runpod.client.status("endpoint", "rp-1")
    assert (state.id, state.status, state.delay_ms) == ("rp-1", RunPodStatus.IN_PROGRESS, 120)
    assert runpod.calls[0].headers["authorization"] == "Bearer rp-key"
    assert runpod.calls[0].url == "https://api.runpod.test/v2/endpoint/status/rp-1"


async def test_a_status_runpod_does_not_name_yet_is_unknown_not_finished() -> None:
    runpod = Recorded(answer(200, {"id": "rp-1", "status": "THROTTLED_SOMEHOW"}))
    state = await runpod.client.status("endpoint", "rp-1")
    assert state.status == RunPodStatus.UNKNOWN
    assert not state.finished


@pytest.mark.parametrize(
    ("status", "error", "calls"),
    [
        (401, RunPodUnauthorized, 1),
        (403, RunPodUnauthorized, 1),
        (404, RunPodJobGone, 1),
        (400, RunPodRejected, 1),
        (422, RunPodRejected, 1),
        (500, RunPodUnavailable, POLICY.attempts),
        (503, RunPodUnavailable, POLICY.attempts),
        (429, RunPodThrottled, POLICY.attempts),
    ],
)
async def test_each_answer_maps_to_its_error_and_only_the_transient_ones_are_retried(
    status: int, error: type[RunPodError], calls: int
) -> None:
    runpod = Recorded(answer(status, {"error": "x"}, **{"retry-after": "0"}))
    with pytest.raises(error):
        await runpod.client.status("endpoint", "rp-1")
    assert len(runpod.calls) == calls


async def test_a_429_is_waited_out_and_the_call_then_succeeds() -> None:
    answers = iter(
        [answer(429, **{"retry-after": "0.001"}), answer(200, {"id": "rp-1", "status": "COMPLETED"})]
    )
    runpod = Recorded(lambda request: next(answers)(request))
    assert (await runpod.client.status("endpoint", "rp-1")).finished
    assert len(runpod.calls) == 2


async def test_an_unknown_job_answered_200_failed_not_found_is_gone() -> None:
    runpod = Recorded(answer(200, {"id": "rp-1", "status": "FAILED", "error": "Job ID not found"}))
    with pytest.raises(RunPodJobGone):
        await runpod.client.status("endpoint", "rp-1")


async def test_a_worker_failure_that_mentions_not_found_in_its_output_is_not_gone() -> None:
    body = {"id": "rp-1", "status": "FAILED", "error": "model file not found", "output": {"x": 1}}
    state = await Recorded(answer(200, body)).client.status("endpoint", "rp-1")
    assert state.status == RunPodStatus.FAILED


async def test_a_connection_never_made_is_retried_for_every_call() -> None:
    runpod = Recorded(fail_with(httpx.ConnectError))
    with pytest.raises(RunPodUnavailable):
        await runpod.client.submit("endpoint", {"input": {}})
    assert len(runpod.calls) == POLICY.attempts


async def test_a_submit_whose_answer_was_lost_is_never_repeated_here() -> None:
    # RunPod has no idempotency key: a second submit could run (and bill) the job twice.
    runpod = Recorded(fail_with(httpx.ReadTimeout))
    with pytest.raises(RunPodOutcomeUnknown):
        await runpod.client.submit("endpoint", {"input": {}})
    assert len(runpod.calls) == 1


async def test_a_status_whose_answer_was_lost_is_asked_again() -> None:
    runpod = Recorded(fail_with(httpx.RemoteProtocolError))
    with pytest.raises(RunPodOutcomeUnknown):
        await runpod.client.status("endpoint", "rp-1")
    assert len(runpod.calls) == POLICY.attempts


@given(status=st.integers(min_value=400, max_value=599))
async def test_every_error_status_is_a_runpod_error_with_a_message(status: int) -> None:
    runpod = Recorded(answer(status, **{"retry-after": "0"}))
    with pytest.raises(RunPodError) as raised:
        await runpod.client.cancel("endpoint", "rp-1")
    assert str(status) in str(raised.value)
    assert isinstance(raised.value, RunPodUnavailable) == (status >= 500 or status == 429)


@given(
    failed=st.integers(min_value=1, max_value=40),
    initial=st.floats(min_value=0.001, max_value=5),
    cap=st.floats(min_value=0.001, max_value=60),
)
def test_a_retry_waits_half_to_all_of_the_doubled_wait_so_the_jitter_scales_with_it(
    failed: int, initial: float, cap: float
) -> None:
    policy = RetryPolicy(initial_wait_s=initial, max_wait_s=cap)
    full = min(initial * 2 ** (failed - 1), cap)
    assert full / 2 <= backoff_s(failed, policy) <= full


def test_the_first_retry_of_the_default_policy_waits_a_fifth_of_a_second_at_most() -> None:
    # A submission held back is a GPU worker idle: no whole second of jitter on a short wait.
    assert max(backoff_s(1, RetryPolicy()) for _ in range(1000)) <= 0.2
