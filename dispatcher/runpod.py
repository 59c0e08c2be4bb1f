"""The GPU endpoint adapter: RunPod's serverless API over one pooled httpx client (dispatcher.http).

Retries are tenacity's, with every choice explicit: exponential backoff with
jitter, Retry-After honoured on 429, a bounded number of attempts, and only on
the named retryable errors. A submit whose answer was lost is NOT retried here
(RunPod has no idempotency key): the caller decides, see runner.py.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)

from dispatcher.domain import (
    RequestTally,
    RunPodJobGone,
    RunPodOutcomeUnknown,
    RunPodRejected,
    RunPodState,
    RunPodStatus,
    RunPodThrottled,
    RunPodUnauthorized,
    RunPodUnavailable,
)
from dispatcher.metrics import RUNPOD_CALLS

log = structlog.get_logger("dispatcher.runpod")

# Sent means the server may have acted on it; not sent means it certainly did not.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_ANSWER_LOST = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    initial_wait_s: float = 0.2
    max_wait_s: float = 10.0
    max_retry_after_s: float = 30.0


class RunPodClient:
    def __init__(
        self, http: httpx.AsyncClient, base_url: str, api_key: str, policy: RetryPolicy | None = None
    ) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._policy = policy or RetryPolicy()
        # After a 429, per endpoint and route: RunPod limits each operation (run, status, ...) apart.
        self._paused_until: dict[tuple[str, str], float] = {}

    async def submit(self, endpoint_id: str, payload: dict[str, Any]) -> str:
        data = await self._retrying((RunPodUnavailable,), endpoint_id, "POST", "run", payload)
        return str(data["id"])

    async def status(self, endpoint_id: str, job_id: str, tally: RequestTally | None = None) -> RunPodState:
        """The job's state; ``tally`` counts every request sent for it, retries included."""
        idempotent = (RunPodUnavailable, RunPodOutcomeUnknown)
        data = await self._retrying(idempotent, endpoint_id, "GET", f"status/{job_id}", tally=tally)
        state = RunPodState.from_json(data)
        if _is_unknown_job(state):
            raise RunPodJobGone(f"RunPod status: {state.error}")
        return state

    async def health(self, endpoint_id: str) -> dict[str, Any]:
        """The endpoint's queue and workers; one try (used to probe a paused endpoint)."""
        return await self._call(endpoint_id, "GET", "health")

    async def cancel(self, endpoint_id: str, job_id: str) -> None:
        idempotent = (RunPodUnavailable, RunPodOutcomeUnknown)
        await self._retrying(idempotent, endpoint_id, "POST", f"cancel/{job_id}")

    async def _retrying(
        self,
        retry_on: tuple[type[Exception], ...],
        endpoint_id: str,
        method: str,
        path: str,
        body: Any = None,
        tally: RequestTally | None = None,
    ) -> dict[str, Any]:
        """One RunPod call, retried on the named errors only."""
        policy = self._policy

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, RunPodThrottled):
                return min(error.retry_after_s, policy.max_retry_after_s)
            return backoff_s(state.attempt_number, policy)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.attempts),
            wait=wait,
            retry=retry_if_exception_type(retry_on),
            reraise=True,
        )
        result: dict[str, Any] = await retrying(self._call, endpoint_id, method, path, body, tally)
        return result

    async def _call(
        self, endpoint_id: str, method: str, path: str, body: Any = None, tally: RequestTally | None = None
    ) -> dict[str, Any]:
        route = path.split("/")[0]
        if (pause := self._paused_until.get((endpoint_id, route), 0.0) - time.monotonic()) > 0:
            await asyncio.sleep(pause)  # every call of that route backs off after a 429
        if tally is not None:
            tally.requests += 1
        try:
            response = await self._http.request(
                method, f"{self._base_url}/{endpoint_id}/{path}", json=body, headers=self._headers
            )
        except _NOT_SENT as exc:
            RUNPOD_CALLS.labels(route=route, status="unreachable").inc()
            raise RunPodUnavailable(f"RunPod {route}: {type(exc).__name__}") from exc
        except _ANSWER_LOST as exc:
            RUNPOD_CALLS.labels(route=route, status="answer_lost").inc()
            raise RunPodOutcomeUnknown(f"RunPod {route}: the answer was lost ({type(exc).__name__})") from exc
        RUNPOD_CALLS.labels(route=route, status=str(response.status_code)).inc()
        return self._answer(endpoint_id, route, response)

    def _answer(self, endpoint_id: str, route: str, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        if status == 429:
            retry_after = _retry_after(response)
            self._paused_until[(endpoint_id, route)] = time.monotonic() + retry_after
            raise RunPodThrottled(f"RunPod {route}: 429, retry after {retry_after:g} s", retry_after)
        if status >= 500:
            raise RunPodUnavailable(f"RunPod {route}: {status}")
        if status == 404:
            raise RunPodJobGone(f"RunPod {route}: 404 {response.text[:200]}")
        if status in (401, 403):
            raise RunPodUnauthorized(f"RunPod {route}: {status}: the API key or endpoint is refused")
        if status >= 400:
            raise RunPodRejected(f"RunPod {route}: {status} {response.text[:200]}")
        data: dict[str, Any] = response.json()
        return data


def backoff_s(failed_attempts: int, policy: RetryPolicy) -> float:
    """The wait before the next try: half to all of ``initial_wait_s`` doubled per failed try
    (capped), so the jitter scales with the wait. (tenacity's wait_exponential_jitter adds up
    to a whole second whatever the wait: a 5xx on /run then held a submission for 0.7 s on
    average instead of 0.15, while a GPU worker idled for it.)"""
    full = min(policy.initial_wait_s * 2.0 ** (failed_attempts - 1), policy.max_wait_s)
    return full / 2 + random.uniform(0, full / 2)


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(float(response.headers.get("retry-after", "1")), 0.0)
    except ValueError:
        return 1.0


def _is_unknown_job(state: RunPodState) -> bool:
    """RunPod's local test server (and, by its SDK's code, older platform versions) answers an
    unknown id with ``200 {"status": "FAILED", "error": "Job ID not found"}``: deliberately read
    from the message, since nothing else tells it from a worker's failure."""
    return (
        state.status == RunPodStatus.FAILED
        and state.output is None
        and isinstance(state.error, str)
        and "not found" in state.error.lower()
        and "job" in state.error.lower()
    )
