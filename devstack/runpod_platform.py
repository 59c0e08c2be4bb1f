"""The RunPod serverless platform stand-in: queue, job lifecycle, workers' channels, webhooks.

This is the behaviour behind the HTTP routes in ``runpod_api``: jobs wait IN_QUEUE
until a worker takes one, run IN_PROGRESS until the worker posts a result or the
execution timeout passes, and end COMPLETED, FAILED, CANCELLED or TIMED_OUT. Finished
jobs are kept for ``retention_s`` (30 minutes on RunPod); a job older than its
``ttl`` is gone whatever its state. Faults (see ``Faults``) make it misbehave the
ways RunPod does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import aiohttp
import structlog

log = structlog.get_logger("devstack.runpod")


class JobStatus(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"


FINAL_STATES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT})
WEBHOOK_STATES = FINAL_STATES - {JobStatus.CANCELLED}


@dataclass
class Faults:
    """Fault injection knobs; every rate is a probability in [0, 1]."""

    rate_429: float = 0.0  # public API answers 429 with Retry-After
    retry_after_s: float = 1.0
    rate_5xx: float = 0.0  # public API answers 500, 502 or 503
    latency_s: float = 0.0  # added to every public API answer
    rate_drop: float = 0.0  # the request is carried out, then the connection dropped: the answer is lost
    rate_fail_retryable: float = 0.0  # a finished job FAILs with a retryable error instead
    rate_fail_permanent: float = 0.0  # a finished job FAILs with a permanent error instead
    rate_worker_death: float = (
        0.0  # a synthetic worker dies holding the job: TIMED_OUT after executionTimeout
    )
    rate_duplicate_run: float = 0.0  # RunPod runs the job twice (two results, two webhooks)
    rerun_lost_jobs: bool = False  # a job whose worker died runs again instead of TIMED_OUT
    queue_delay_s: float = 0.0  # least time a job waits IN_QUEUE
    rate_limits: bool = False  # enforce RunPod's per-10 s limits: run 1000, status 2000, cancel 100
    # an unknown job id is answered as RunPod's local test server does, 200 {"status": "FAILED",
    # "error": "Job ID not found"}, instead of the platform's 404
    unknown_job_as_failed: bool = False
    rate_status_400: float = 0.0  # /status answers 400 (a request RunPod refuses: never retried)

    def update(self, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            if not hasattr(self, name):
                raise ValueError(f"unknown fault knob: {name}")
            setattr(self, name, type(getattr(self, name))(value))


@dataclass
class Job:
    id: str
    endpoint_id: str
    input: Any
    webhook: str | None
    execution_timeout_s: float
    ttl_s: float
    submitted_at: float = field(default_factory=time.monotonic)
    not_before: float = 0.0
    status: JobStatus = JobStatus.IN_QUEUE
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    output: Any = None
    error: str | None = None
    runs: int = 0
    lost: bool = False  # its worker died; it will only end by its timeout

    def envelope(self) -> dict[str, Any]:
        """The JSON /status answers, RunPod's shape."""
        answer: dict[str, Any] = {"id": self.id, "status": self.status.value}
        if self.started_at is not None:
            answer["delayTime"] = round((self.started_at - self.submitted_at) * 1000)
            answer["workerId"] = self.worker_id
        if self.finished_at is not None and self.started_at is not None:
            answer["executionTime"] = round((self.finished_at - self.started_at) * 1000)
        if self.output is not None:
            answer["output"] = self.output
        if self.error is not None:
            answer["error"] = self.error
        return answer


@dataclass
class Counters:
    """What the benchmarks and tests read: requests by route and status, and per-job call counts."""

    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    status_polls: Counter[str] = field(default_factory=Counter)
    webhook_deliveries: Counter[str] = field(default_factory=Counter)
    submits: int = 0
    runs_started: int = 0
    submitted_at: dict[str, float] = field(default_factory=dict)  # wall clock, for latency benchmarks
    finished_at: dict[str, float] = field(default_factory=dict)
    # What RunPod would bill: each run's seconds on a worker, from taking the job to reporting its
    # end (a duplicate run and a cancelled job's work included), and workers' cold starts.
    gpu_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    init_seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": [
                {"route": route, "status": status, "count": count}
                for (route, status), count in sorted(self.requests.items())
            ],
            "status_polls": dict(self.status_polls),
            "webhook_deliveries": dict(self.webhook_deliveries),
            "submits": self.submits,
            "runs_started": self.runs_started,
            "submitted_at": self.submitted_at,
            "finished_at": self.finished_at,
            "gpu_seconds": dict(self.gpu_seconds),
            "init_seconds": self.init_seconds,
        }


class RateLimiter:
    """RunPod's per-endpoint sliding 10-second windows."""

    LIMITS: ClassVar[dict[str, int]] = {"run": 1000, "runsync": 1000, "status": 2000, "cancel": 100}

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str], deque[float]] = {}

    def allow(self, endpoint_id: str, route: str) -> bool:
        limit = self.LIMITS.get(route)
        if limit is None:
            return True
        now = time.monotonic()
        calls = self._calls.setdefault((endpoint_id, route), deque())
        while calls and calls[0] <= now - 10:
            calls.popleft()
        if len(calls) >= limit:
            return False
        calls.append(now)
        return True


class Platform:
    """All endpoints of one stand-in: their queues, jobs, workers and webhooks."""

    def __init__(
        self,
        endpoint_ids: list[str],
        *,
        retention_s: float = 1800,
        default_execution_timeout_s: float = 600,
        default_ttl_s: float = 24 * 3600,
        webhook_retries: int = 2,
        webhook_retry_delay_s: float = 10,
        faults: Faults | None = None,
        seed: int | None = None,
    ) -> None:
        self.endpoint_ids = set(endpoint_ids)
        self.retention_s = retention_s
        self.default_execution_timeout_s = default_execution_timeout_s
        self.default_ttl_s = default_ttl_s
        self.webhook_retries = webhook_retries
        self.webhook_retry_delay_s = webhook_retry_delay_s
        self.faults = faults or Faults()
        self.api_key: str | None = None  # set by the API that serves it; a test may rotate it
        self.endpoint_api_keys: dict[str, str] = {}  # one endpoint's own key (a key rotated on one)
        self.endpoint_faults: dict[str, Faults] = {}  # overrides for one endpoint (failover tests)
        self.counters = Counters()
        self.rate_limiter = RateLimiter()
        self.random = random.Random(seed)
        self.jobs: dict[str, Job] = {}
        self._queues: dict[str, deque[str]] = {endpoint_id: deque() for endpoint_id in endpoint_ids}
        self._work_available = asyncio.Condition()
        self._stop_signals: dict[str, asyncio.Queue[str]] = {}
        self.worker_seen: dict[str, float] = {}
        self.initializing: set[str] = set()  # workers in their cold start (model loading)
        self._run_started: dict[tuple[str, str], float] = {}  # (job, worker): when that run began
        self.on_stop_pod: Callable[[str], None] | None = None
        self._finished: dict[str, asyncio.Event] = {}  # only for jobs someone waits on (runsync)
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        # aiohttp itself, not the dispatcher's client: a stand-in shares no code with what it serves.
        self._http: aiohttp.ClientSession | None = None

    # ---- lifecycle -------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        self._spawn(self._reap_forever(), "runpod-reaper")

    async def close(self) -> None:
        self._closed = True
        async with self._work_available:
            self._work_available.notify_all()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.close()

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def faults_for(self, endpoint_id: str) -> Faults:
        return self.endpoint_faults.get(endpoint_id, self.faults)

    # ---- public API ------------------------------------------------------------------
    async def submit(self, endpoint_id: str, body: dict[str, Any]) -> Job:
        policy = body.get("policy") or {}
        job = Job(
            id=f"{uuid.uuid4()}-u1",
            endpoint_id=endpoint_id,
            input=body["input"],
            webhook=body.get("webhook"),
            execution_timeout_s=float(policy.get("executionTimeout", self.default_execution_timeout_s * 1000))
            / 1000,
            ttl_s=float(policy.get("ttl", self.default_ttl_s * 1000)) / 1000,
        )
        job.not_before = job.submitted_at + self.faults.queue_delay_s
        self.jobs[job.id] = job
        self.counters.submits += 1
        self.counters.submitted_at[job.id] = time.time()
        await self._enqueue(job)
        return job

    def get(self, endpoint_id: str, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        return job if job is not None and job.endpoint_id == endpoint_id else None

    async def wait_final(self, job: Job, timeout_s: float) -> None:
        finished = self._finished.setdefault(job.id, asyncio.Event())
        if job.status not in FINAL_STATES:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), timeout_s)

    def cancel(self, job: Job) -> None:
        if job.status in FINAL_STATES:
            return
        if job.status is JobStatus.IN_QUEUE:
            with contextlib.suppress(ValueError):
                self._queues[job.endpoint_id].remove(job.id)
        elif job.worker_id is not None:
            self._stop_signal(job.worker_id).put_nowait(job.id)
        self._finish(job, JobStatus.CANCELLED)

    def purge_queue(self, endpoint_id: str) -> int:
        queue = self._queues[endpoint_id]
        removed = len(queue)
        for job_id in queue:
            self.jobs.pop(job_id, None)
        queue.clear()
        return removed

    def health(self, endpoint_id: str) -> dict[str, Any]:
        jobs = [job for job in self.jobs.values() if job.endpoint_id == endpoint_id]
        by_status = Counter(job.status for job in jobs)
        now = time.monotonic()
        live = {worker for worker, seen in self.worker_seen.items() if now - seen < 30}
        busy = {job.worker_id for job in jobs if job.status is JobStatus.IN_PROGRESS and not job.lost}
        return {
            "jobs": {
                "completed": by_status[JobStatus.COMPLETED],
                "failed": by_status[JobStatus.FAILED] + by_status[JobStatus.TIMED_OUT],
                "inProgress": by_status[JobStatus.IN_PROGRESS],
                "inQueue": by_status[JobStatus.IN_QUEUE],
                "retried": sum(1 for job in jobs if job.runs > 1),
            },
            "workers": {
                "idle": len(live - busy),
                "running": len(live & busy),
                "ready": len(live),
                "initializing": len(self.initializing),
                "throttled": 0,
                "unhealthy": 0,
            },
        }

    # ---- worker side -----------------------------------------------------------------
    async def take(self, endpoint_id: str, worker_id: str, max_jobs: int, timeout_s: float) -> list[Job]:
        """Long-poll for up to max_jobs queued jobs; [] after timeout_s."""
        self.worker_seen[worker_id] = time.monotonic()
        deadline = time.monotonic() + timeout_s
        queue = self._queues[endpoint_id]
        async with self._work_available:
            while not self._closed:
                now = time.monotonic()
                taken: list[Job] = []
                while queue and len(taken) < max_jobs:
                    job = self.jobs.get(queue[0])
                    if job is None or job.status in FINAL_STATES:
                        queue.popleft()  # purged, expired or cancelled while queued
                    elif job.not_before > now:
                        break
                    else:
                        taken.append(self._start(self.jobs[queue.popleft()], worker_id))
                if taken:
                    return taken
                if now >= deadline:
                    return []
                head = self.jobs.get(queue[0]) if queue else None
                wake_at = min(deadline, head.not_before if head else deadline)
                # asyncio.timeout, not wait_for: on 3.11 a worker cancelled while wait_for was
                # cancelling the inner wait() left the lock released under `async with`
                # (RuntimeError: Lock is not acquired; CPython bpo-42600). In this task, wait()
                # takes the lock back before any exception leaves it.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wake_at - now, 0.001)):
                        await self._work_available.wait()
        return []

    async def stop_signals(self, worker_id: str, timeout_s: float) -> list[str]:
        self.worker_seen[worker_id] = time.monotonic()
        signals = self._stop_signal(worker_id)
        deadline = time.monotonic() + timeout_s
        while not self._closed and time.monotonic() < deadline:  # in slices, so close() ends the poll
            with contextlib.suppress(TimeoutError):
                first = await asyncio.wait_for(signals.get(), min(0.25, timeout_s))
                return [first, *(signals.get_nowait() for _ in range(signals.qsize()))]
        return []

    def ping(self, worker_id: str) -> None:
        self.worker_seen[worker_id] = time.monotonic()

    def report(self, job_id: str, worker_id: str, result: dict[str, Any]) -> None:
        """A worker's job-done post: a progress update, or the job's result."""
        self.worker_seen[worker_id] = time.monotonic()
        job = self.jobs.get(job_id)
        if result.get("stopPod") and self.on_stop_pod is not None:
            self.on_stop_pod(worker_id)
        final = result.get("status") != JobStatus.IN_PROGRESS
        if final and (began := self._run_started.pop((job_id, worker_id), None)) is not None:
            self.counters.gpu_seconds[job_id] += time.monotonic() - began  # this run is over: bill it
        if job is None or job.status in {JobStatus.CANCELLED, JobStatus.TIMED_OUT}:
            return  # too late: RunPod drops results of jobs it has already ended
        if result.get("status") == JobStatus.IN_PROGRESS:
            if job.status is JobStatus.IN_PROGRESS:
                job.output = result.get("output")
            return
        injected = self._injected_failure()
        if injected is not None:
            job.output, job.error = None, injected
            self._finish(job, JobStatus.FAILED)
        elif result.get("error"):
            job.output, job.error = result.get("output") or None, str(result["error"])
            self._finish(job, JobStatus.FAILED)
        else:
            job.output, job.error = result.get("output"), None
            self._finish(job, JobStatus.COMPLETED)

    def abandon(self, job: Job) -> None:
        """The worker holding the job died; nothing will report it."""
        job.lost = True

    # ---- internals -------------------------------------------------------------------
    async def _enqueue(self, job: Job, front: bool = False) -> None:
        queue = self._queues[job.endpoint_id]
        queue.appendleft(job.id) if front else queue.append(job.id)
        async with self._work_available:
            self._work_available.notify_all()

    def _start(self, job: Job, worker_id: str) -> Job:
        job.status, job.worker_id, job.runs, job.lost = JobStatus.IN_PROGRESS, worker_id, job.runs + 1, False
        job.started_at = time.monotonic()
        self._run_started[(job.id, worker_id)] = job.started_at
        self.counters.runs_started += 1
        if job.runs == 1 and self.random.random() < self.faults.rate_duplicate_run:
            # RunPod can hand one request to two workers; the second run starts later.
            self._queues[job.endpoint_id].appendleft(job.id)
        return job

    def _injected_failure(self) -> str | None:
        draw = self.random.random()
        for rate, retryable in (
            (self.faults.rate_fail_permanent, False),
            (self.faults.rate_fail_retryable, True),
        ):
            if draw < rate:
                return json.dumps(
                    {
                        "error_type": "injected_fault",
                        "error_message": f"injected {'retryable' if retryable else 'permanent'} failure",
                        "retryable": retryable,
                    }
                )
            draw -= rate
        return None

    def _finish(self, job: Job, status: JobStatus) -> None:
        job.status = status
        job.finished_at = time.monotonic()
        self.counters.finished_at[job.id] = time.time()
        if (finished := self._finished.pop(job.id, None)) is not None:
            finished.set()
        if job.webhook and status in WEBHOOK_STATES:
            self._spawn(self._deliver_webhook(job, job.envelope()), f"webhook-{job.id}")

    async def _deliver_webhook(self, job: Job, envelope: dict[str, Any]) -> None:
        """POST the result to the job's webhook; RunPod retries twice, 10 s apart, unsigned."""
        payload = {**envelope, "input": job.input, "webhook": job.webhook}
        assert job.webhook is not None
        for attempt in range(self.webhook_retries + 1):
            if attempt:
                await asyncio.sleep(self.webhook_retry_delay_s)
            self.counters.webhook_deliveries[job.id] += 1
            try:
                async with self._session().post(job.webhook, json=payload) as response:
                    if response.ok:
                        return
            except (aiohttp.ClientError, TimeoutError) as error:
                log.info("webhook.failed", job_id=job.id, attempt=attempt, error=type(error).__name__)

    def _session(self) -> aiohttp.ClientSession:
        # Opened on first use: an aiohttp session belongs to the loop it was created on.
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), trust_env=False)
        return self._http

    def _stop_signal(self, worker_id: str) -> asyncio.Queue[str]:
        return self._stop_signals.setdefault(worker_id, asyncio.Queue())

    async def _reap_forever(self, interval_s: float = 0.05) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self._reap(time.monotonic())

    async def _reap(self, now: float) -> None:
        for job in list(self.jobs.values()):
            if now - job.submitted_at > job.ttl_s or (
                job.finished_at is not None and now - job.finished_at > self.retention_s
            ):
                self._forget(job)
            elif (
                job.status is JobStatus.IN_PROGRESS
                and now - (job.started_at or now) > job.execution_timeout_s
            ):
                await self._time_out(job)

    async def _time_out(self, job: Job) -> None:
        if job.lost and self.faults.rerun_lost_jobs and job.runs == 1:
            job.status, job.worker_id = JobStatus.IN_QUEUE, None
            await self._enqueue(job, front=True)
            return
        if job.worker_id is not None and not job.lost:
            self._stop_signal(job.worker_id).put_nowait(job.id)
        self._finish(job, JobStatus.TIMED_OUT)

    def _forget(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        if job.status is JobStatus.IN_QUEUE:
            with contextlib.suppress(ValueError):
                self._queues[job.endpoint_id].remove(job.id)
