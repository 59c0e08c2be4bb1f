"""Per-caller token buckets: a burst allowance refilled at a steady rate.

``SharedRateLimiter`` (the default) keeps the buckets in Postgres (``take_rate_limit_token``, one
round trip per call), so every replica behind a load balancer enforces one limit together.
``RateLimiter`` keeps them in this process, in bounded memory (RATE_LIMIT_STORE=memory): no
round trip, but with N replicas the effective limit is N times the setting.

Memory: a bucket untouched for burst/rate seconds has refilled, so it is the same as
no bucket and is dropped (buckets are kept oldest-first, so that costs nothing per call).
Past ``max_keys`` live buckets the oldest go too: that forgives their callers, it never
refuses anyone more.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from psycopg_pool import AsyncConnectionPool

from api.queries import QUERIES


class Limiter(Protocol):
    async def take(self, key: str) -> float: ...


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(
        self,
        per_minute: float,
        burst: int,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.rate_per_s = per_minute / 60
        self.burst = burst
        self.max_keys = max_keys
        self._refill_s = burst / self.rate_per_s
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, key: str) -> float:
        return self.take_now(key)

    def take_now(self, key: str) -> float:
        """Take one token for ``key``: 0 when allowed, else the seconds until one is available."""
        now = self.clock()
        self._forget_refilled(now)
        bucket = self._buckets.pop(key, None) or _Bucket(float(self.burst), now)
        self._buckets[key] = bucket  # now the newest
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate_per_s)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate_per_s

    def _forget_refilled(self, now: float) -> None:
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if now - oldest.updated < self._refill_s and len(self._buckets) < self.max_keys:
                return
            self._buckets.popitem(last=False)


class SharedRateLimiter:
    """The same buckets, in Postgres: one limit for every replica."""

    def __init__(self, pool: AsyncConnectionPool, per_minute: float, burst: int) -> None:
        self.pool, self.rate_per_s, self.burst = pool, per_minute / 60, burst

    async def take(self, key: str) -> float:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                QUERIES["take_rate_limit_token"], {"key": key, "burst": self.burst, "per_s": self.rate_per_s}
            )
            row = await cursor.fetchone()
        return float(row[0]) if row is not None else 0.0
