"""Failover across RunPod endpoints, and pausing the ones that refuse our key."""

from __future__ import annotations

import time

import structlog

from dispatcher.domain import RunPodUnauthorized
from dispatcher.metrics import ENDPOINT_PAUSED

log = structlog.get_logger("dispatcher.endpoints")


class EndpointPool:
    """Failover across endpoint ids: the first one not cooling down after repeated failures,
    and never one that refuses our key (paused until a probe finds it answering again)."""

    def __init__(self, endpoint_ids: list[str], cooldown_s: float, failures_to_trip: int = 3) -> None:
        self.endpoint_ids = endpoint_ids
        self.cooldown_s = cooldown_s
        self.failures_to_trip = failures_to_trip
        self._failures = dict.fromkeys(endpoint_ids, 0)
        self._cooling_until = dict.fromkeys(endpoint_ids, 0.0)
        self.unauthorized: set[str] = set()

    def pick(self) -> str:
        """An endpoint to submit to; RunPodUnauthorized if every one refuses our key."""
        now = time.monotonic()
        usable = [endpoint for endpoint in self.endpoint_ids if endpoint not in self.unauthorized]
        if not usable:
            raise RunPodUnauthorized("every RunPod endpoint refuses the API key")
        healthy = [endpoint for endpoint in usable if self._cooling_until[endpoint] <= now]
        return healthy[0] if healthy else min(usable, key=self._cooling_until.__getitem__)

    @property
    def all_paused(self) -> bool:
        return self.unauthorized >= set(self.endpoint_ids)

    def pause(self, endpoint_id: str, reason: str) -> None:
        if endpoint_id not in self.unauthorized:
            self.unauthorized.add(endpoint_id)
            ENDPOINT_PAUSED.labels(endpoint_id=endpoint_id).set(1)
            log.error("endpoint.paused", endpoint_id=endpoint_id, reason=reason)

    def resume(self, endpoint_id: str) -> None:
        if endpoint_id in self.unauthorized:
            self.unauthorized.discard(endpoint_id)
            ENDPOINT_PAUSED.labels(endpoint_id=endpoint_id).set(0)
            log.info("endpoint.resumed", endpoint_id=endpoint_id)

    def succeeded(self, endpoint_id: str) -> None:
        self._failures[endpoint_id] = 0

    def failed(self, endpoint_id: str) -> None:
        self._failures[endpoint_id] += 1
        if self._failures[endpoint_id] >= self.failures_to_trip:
            self._cooling_until[endpoint_id] = time.monotonic() + self.cooldown_s
            self._failures[endpoint_id] = 0
            log.warning("endpoint.cooling_down", endpoint_id=endpoint_id, seconds=self.cooldown_s)
