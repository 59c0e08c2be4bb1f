"""The rate limiter's memory is bounded, and bounding it never refuses anyone more."""

from __future__ import annotations

import pytest

from api.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_burst_then_the_steady_rate(clock: Clock) -> None:
    limiter = RateLimiter(per_minute=60, burst=3, clock=clock)
    assert [limiter.take_now("a") for _ in range(3)] == [0.0] * 3
    assert limiter.take_now("a") == pytest.approx(1.0)
    clock.now += 1
    assert limiter.take_now("a") == 0.0


def test_buckets_that_have_refilled_are_forgotten(clock: Clock) -> None:
    limiter = RateLimiter(per_minute=60, burst=3, clock=clock)  # a bucket refills in 3 s
    for n in range(1000):
        limiter.take_now(f"caller-{n}")
    assert len(limiter) == 1000
    clock.now += 3.01
    limiter.take_now("late")
    assert len(limiter) == 1


def test_past_max_keys_the_oldest_are_forgiven_never_refused(clock: Clock) -> None:
    limiter = RateLimiter(per_minute=1, burst=1, max_keys=100, clock=clock)
    for n in range(10_000):
        assert limiter.take_now(f"forged-{n}") == 0.0  # each new key is a new caller
    assert len(limiter) <= 100
    assert limiter.take_now("forged-9999") > 0, "a recent caller is still limited"
