"""The dispatcher's core: claim jobs, run each on RunPod, store the result, record every step.

One claim loop fills free slots (a global and a per-user cap) whenever it is
woken (a notification, a finished job) or the sweep timer fires. Each claimed
job runs in its own task: reuse a stored image if an identical seeded one exists,
else submit (or resume the RunPod job a dead dispatcher left behind), wait for
completion by webhook or adaptive polling, check and upload the PNG, and move
the row to succeeded. A lease renewer keeps the rows ours while we work and
notices when one is not (a user cancelled it): that task stops and cancels its
RunPod job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
import structlog

from dispatcher.domain import (
    ClaimedJob,
    DispatchError,
    ReusableImage,
    RunPodError,
    RunPodJobGone,
    RunPodOutcomeUnknown,
    RunPodRejected,
    RunPodState,
    RunPodUnauthorized,
    RunPodUnavailable,
    StorageError,
    WorkerFailure,
)
from dispatcher.images import decode_png
from dispatcher.metrics import (
    COMPLETION_TO_STORED,
    INSERT_TO_SUBMIT,
    JOBS_FINISHED,
    JOBS_IN_FLIGHT,
    RESUBMISSIONS,
    STATUS_POLLS_PER_JOB,
)
from dispatcher.polling import FixedSchedule, LatencyModel, PollSchedule
from dispatcher.runpod import EndpointPool, RunPodClient
from dispatcher.settings import DispatcherSettings
from dispatcher.storage import SupabaseStorage
from dispatcher.store import PostgresJobStore
from dispatcher.webhook import webhook_url
from kernel.logs import first_line

log = structlog.get_logger("dispatcher")


class LostJob(Exception):
    """This dispatcher no longer owns the job (cancelled by its user, or taken over)."""


class Deferred(Exception):
    """The job cannot be submitted anywhere now (every endpoint refuses our key): it goes back
    to the queue without counting an attempt."""


@dataclass
class JobRun:
    """A claimed job in flight, and what reaches it from outside its task."""

    job: ClaimedJob
    attempt: int
    submission: int  # names this submission's webhook URL; never repeats for the job
    endpoint_id: str | None = None
    runpod_job_id: str | None = None
    polls: int = 0
    submitted_at: float = 0.0
    hint: asyncio.Event = field(default_factory=asyncio.Event)
    webhook_state: RunPodState | None = None
    lost: bool = False
    maybe_submitted: bool = False  # a submission whose RunPod id we never learnt may exist


class Dispatcher:
    def __init__(
        self,
        settings: DispatcherSettings,
        store: PostgresJobStore,
        runpod: RunPodClient,
        storage: SupabaseStorage,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runpod = runpod
        self.storage = storage
        self.endpoints = EndpointPool(settings.runpod_endpoint_id, settings.endpoint_cooldown_seconds)
        self.model = LatencyModel()
        self.active: dict[UUID, JobRun] = {}
        self._tasks: dict[UUID, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.log = log.bind(dispatcher_id=settings.dispatcher_id)

    # ---- outside events ------------------------------------------------------------
    def wake(self, _payload: str = "") -> None:
        self._wake.set()

    def deliver_webhook(self, job_id: UUID, submission: int, payload: dict[str, Any]) -> str:
        """A webhook whose token checked out: 'delivered' to the job this process runs, 'elsewhere'
        if it runs in no task here, or why it was refused. Only the submission we wait on counts,
        and only for the RunPod job recorded for it: an older submission's URL (seen in RunPod's
        logs, or replayed) can never finish a newer run."""
        run = self.active.get(job_id)
        if run is None:
            return "elsewhere"
        state = RunPodState.from_json(payload)
        if submission != run.submission:
            return "not the current submission"
        if run.runpod_job_id is not None and state.id != run.runpod_job_id:
            return "another RunPod job than the one recorded"
        if not state.finished:
            return "the job is not finished"
        run.webhook_state = state
        run.hint.set()
        return "delivered"

    def hint_completed(self, payload: str) -> None:
        """Another replica received this job's webhook: poll it now."""
        with contextlib.suppress(ValueError):
            run = self.active.get(UUID(payload))
            if run is not None:
                run.hint.set()

    # ---- the loops -----------------------------------------------------------------
    async def run(self) -> None:
        helpers = [
            asyncio.create_task(self._renew_leases_forever(), name="lease-renewer"),
            asyncio.create_task(self._probe_paused_endpoints_forever(), name="endpoint-prober"),
        ]
        try:
            await self._claim_forever()
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop claiming, let jobs in flight finish for grace_s, then hand the rest back."""
        self._stopping.set()
        self._wake.set()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        unfinished = list(self.active)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        with contextlib.suppress(psycopg.Error):
            released = await self.store.release_leases(unfinished)
            self.log.info("dispatcher.stopped", handed_back=len(released))

    async def _claim_forever(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            free = self.settings.max_in_flight - len(self.active)
            # While every endpoint refuses our key, jobs stay queued (the prober wakes us).
            if free > 0 and not self.endpoints.all_paused:
                try:
                    for job in await self.store.claim(free, self.settings.max_in_flight_per_user):
                        self._start(job)
                except psycopg.Error as exc:
                    self.log.warning("claim.failed", error=first_line(exc))
                    await asyncio.sleep(1)
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.sweep_interval_seconds)

    def _start(self, job: ClaimedJob) -> None:
        run = JobRun(
            job,
            job.attempts,
            job.submissions,
            job.runpod_endpoint_id,
            job.runpod_job_id,
            maybe_submitted=job.previous_status != "queued" and job.runpod_job_id is None,
        )
        self.active[job.id] = run
        JOBS_IN_FLIGHT.inc()
        self._tasks[job.id] = asyncio.create_task(self._process(run), name=f"job-{job.id}")

    async def _renew_leases_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            ids = list(self.active)
            try:
                renewed = await self.store.renew_leases(ids)
            except psycopg.Error as exc:
                self.log.warning("lease.renew_failed", error=first_line(exc))
                continue
            for job_id in set(ids) - renewed:
                if (run := self.active.get(job_id)) is not None:
                    run.lost = True
                    run.hint.set()

    async def _probe_paused_endpoints_forever(self) -> None:
        """An endpoint that refused our key is asked again now and then; it resumes once it
        answers (the key was fixed or rotated back), and the claim loop is woken."""
        while True:
            await asyncio.sleep(self.settings.endpoint_probe_seconds)
            for endpoint in sorted(self.endpoints.unauthorized):
                with contextlib.suppress(RunPodError):
                    await self.runpod.health(endpoint)
                    self.endpoints.resume(endpoint)
                    self._wake.set()

    # ---- one job -------------------------------------------------------------------
    async def _process(self, run: JobRun) -> None:
        job_log = self.log.bind(job_id=str(run.job.id), batch_id=str(run.job.batch_id))
        try:
            if await self._reuse(run, job_log):
                return
            state = await self._run_on_runpod(run, job_log)
            await self._settle(run, state, job_log)
        except Deferred as deferred:
            if await self.store.defer(run.job.id, str(deferred), self.settings.endpoint_probe_seconds):
                job_log.warning("job.deferred", reason=str(deferred))
        except LostJob:
            job_log.info("job.lost", reason="the row is no longer ours (cancelled or taken over)")
            await self._cancel_on_runpod(run)
        except DispatchError as error:
            await self._fail(run, str(error), error.retryable, job_log)
        except psycopg.Error as error:
            # The lease runs out and the job is claimed again: nothing is lost.
            job_log.warning("job.database_error", error=first_line(error))
        except Exception as error:  # a bug: record it on the row, retry within max_attempts
            job_log.exception("job.internal_error")
            with contextlib.suppress(psycopg.Error):
                await self._fail(run, f"internal error: {type(error).__name__}: {error}", True, job_log)
        finally:
            self.active.pop(run.job.id, None)
            self._tasks.pop(run.job.id, None)
            JOBS_IN_FLIGHT.dec()
            self._wake.set()  # a slot is free

    async def _run_on_runpod(self, run: JobRun, job_log: Any) -> RunPodState:
        """Submit (or resume) until RunPod finishes the job; resubmissions are counted and explained."""
        for _ in range(run.job.max_attempts + 2):
            if run.runpod_job_id is None:
                if run.maybe_submitted:  # a dead dispatcher's, or one whose answer was lost
                    if (state := await self._await_lost_submission(run)) is not None:
                        return state
                    await self._resubmit(run, "a submission's answer was lost", job_log)
                await self._submit(run, job_log)
                if run.runpod_job_id is None:
                    continue
            try:
                return await self._await_completion(run, job_log)
            except RunPodJobGone:
                await self._resubmit(run, "RunPod no longer knows the job (its result expired)", job_log)
        raise RunPodUnavailable("gave up resubmitting")

    async def _submit(self, run: JobRun, job_log: Any) -> None:
        job, settings = run.job, self.settings
        payload: dict[str, Any] = {
            "input": job.worker_input(),
            "policy": {
                "executionTimeout": int(settings.execution_timeout_seconds * 1000),
                "ttl": int((settings.queue_budget_seconds + settings.execution_timeout_seconds) * 1000),
            },
        }
        if settings.webhook_public_url:
            payload["webhook"] = webhook_url(
                settings.webhook_public_url,
                settings.webhook_secret.get_secret_value(),
                job.id,
                run.submission,
            )
        endpoint, runpod_job_id = await self._submit_anywhere(payload, run, job_log)
        if runpod_job_id is None:
            return
        self.endpoints.succeeded(endpoint)
        run.endpoint_id, run.runpod_job_id, run.submitted_at = endpoint, runpod_job_id, time.monotonic()
        if not await self.store.mark_submitted(job.id, runpod_job_id, endpoint):
            raise LostJob
        INSERT_TO_SUBMIT.observe((datetime.now(UTC) - job.created_at).total_seconds())
        job_log.info("job.submitted", runpod_job_id=runpod_job_id, endpoint_id=endpoint, attempt=run.attempt)

    async def _submit_anywhere(
        self, payload: dict[str, Any], run: JobRun, job_log: Any
    ) -> tuple[str, str | None]:
        """Submit to the first endpoint that takes our key: (endpoint, RunPod job id, or None if
        the answer was lost). An endpoint that refuses the key is paused, not the job's fault:
        when none is left, the job goes back to the queue unpenalised (Deferred)."""
        while True:
            try:
                endpoint = self.endpoints.pick()
            except RunPodUnauthorized as exc:
                raise Deferred(str(exc)) from exc
            try:
                return endpoint, await self.runpod.submit(endpoint, payload)
            except RunPodUnauthorized as exc:
                self.endpoints.pause(endpoint, str(exc))
                continue
            except RunPodOutcomeUnknown:
                run.maybe_submitted = True
                job_log.warning("job.submit_answer_lost", endpoint_id=endpoint)
                return endpoint, None
            except RunPodUnavailable:
                self.endpoints.failed(endpoint)
                raise

    async def _await_lost_submission(self, run: JobRun) -> RunPodState | None:
        """Give a submission we lost track of the chance to report by webhook before paying again."""
        if not self.settings.webhook_public_url:
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.hint.wait(), self.settings.lost_submit_grace_seconds)
        state = run.webhook_state
        if state is not None and state.finished:
            run.runpod_job_id = state.id
            return state
        return None

    async def _resubmit(self, run: JobRun, reason: str, job_log: Any) -> None:
        numbers = await self.store.resubmit(run.job.id, reason)
        if numbers is None:
            raise LostJob
        run.attempt, run.submission = numbers
        run.runpod_job_id = run.endpoint_id = run.webhook_state = None
        run.maybe_submitted = False
        RESUBMISSIONS.labels(reason=reason).inc()
        job_log.warning("job.resubmitted", attempt=run.attempt, submission=run.submission, reason=reason)

    async def _await_completion(self, run: JobRun, job_log: Any) -> RunPodState:
        assert run.runpod_job_id is not None
        assert run.endpoint_id is not None
        schedule = self._schedule(run)
        budget_ends = (
            schedule.submitted_at
            + self.settings.queue_budget_seconds
            + self.settings.execution_timeout_seconds
        )
        delay, marked_running = schedule.first_delay(), run.job.previous_status == "running"
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.hint.wait(), max(delay, 0.0))
            run.hint.clear()
            if run.lost:
                raise LostJob
            if run.webhook_state is not None and run.webhook_state.finished:
                return run.webhook_state
            try:
                state = await self.runpod.status(run.endpoint_id, run.runpod_job_id)
            except RunPodUnauthorized as exc:  # the job runs on; ask again once the key works
                self.endpoints.pause(run.endpoint_id, str(exc))
                delay = self.settings.endpoint_probe_seconds
                continue
            except RunPodRejected:  # it would run on, and bill, with nobody waiting for it
                await self._cancel_on_runpod(run)
                raise
            run.polls += 1
            if state.finished:
                self.model.learn(run.job.size_key, state)
                return state
            if state.status == "IN_PROGRESS" and not marked_running:
                await self.store.mark_running(run.job.id)
                marked_running = True
            if time.monotonic() > budget_ends:
                job_log.warning("job.over_budget", runpod_job_id=run.runpod_job_id)
                await self._cancel_on_runpod(run)
                raise RunPodUnavailable("the job exceeded its time budget on RunPod and was cancelled")
            delay = schedule.next_delay(state)

    def _schedule(self, run: JobRun) -> PollSchedule:
        submitted_at = run.submitted_at or time.monotonic()
        if (interval := self.settings.fixed_poll_interval_seconds) is not None:
            return FixedSchedule(self.model, run.job.size_key, submitted_at, interval_s=interval)
        return PollSchedule(
            self.model, run.job.size_key, submitted_at, webhook=bool(self.settings.webhook_public_url)
        )

    async def _settle(self, run: JobRun, state: RunPodState, job_log: Any) -> None:
        job, seen = run.job, time.monotonic()
        if state.status == "FAILED":
            failure = WorkerFailure.parse(state.error)
            await self._fail(run, failure.message, failure.retryable, job_log)
            return
        if state.status != "COMPLETED":
            raise RunPodUnavailable(f"RunPod ended the job {state.status}")
        # Checking every pixel and hashing take milliseconds of CPU: off the event loop.
        png, digest = await asyncio.to_thread(_checked_png, state.output, job.width, job.height)
        path = job.storage_path
        url = await self.storage.upload_png(path, png)
        output = state.output
        timings = {
            "queue_ms": state.delay_ms,
            "execution_ms": state.execution_ms,
            **output.get("timings", {}),
        }
        stored = await self.store.succeed(
            job,
            image_url=url,
            image_sha256=digest,
            width=job.width,
            height=job.height,
            steps=_reported(output, "steps") or job.steps,
            seed=seed if (seed := _reported(output, "seed")) is not None else job.seed,
            timings=timings,
            status_polls=run.polls,
        )
        if not stored:
            raise LostJob
        COMPLETION_TO_STORED.observe(time.monotonic() - seen)
        STATUS_POLLS_PER_JOB.observe(run.polls)
        JOBS_FINISHED.labels(outcome="succeeded").inc()
        job_log.info("job.succeeded", storage_path=path, status_polls=run.polls, attempt=run.attempt)

    async def _reuse(self, run: JobRun, job_log: Any) -> bool:
        """An identical seeded request already succeeded: reuse its image, skip the GPU."""
        job = run.job
        if not self.settings.reuse_seeded_images or job.seed is None or job.previous_status != "queued":
            return False
        found = await self.store.find_reusable(job)
        if found is None or not await self._copy_verified(found, job.storage_path, job_log):
            return False
        stored = await self.store.succeed(
            job,
            image_url=self.storage.public_url(job.storage_path),
            image_sha256=found.image_sha256,
            width=found.width,
            height=found.height,
            steps=found.steps,
            seed=job.seed,
            timings={"reused": True},
            status_polls=0,
            reused_from=found.id,
        )
        if stored:
            JOBS_FINISHED.labels(outcome="reused").inc()
            job_log.info("job.reused", reused_from=str(found.id))
        return True

    async def _copy_verified(self, found: ReusableImage, path: str, job_log: Any) -> bool:
        """Put the earlier job's bytes at ``path``, only if what sits at its key still hashes to
        what that job recorded (its owner may have written the key again since): never someone
        else's later image."""
        try:
            png = await self.storage.download(found.storage_path)
        except StorageError as exc:
            job_log.info("job.reuse_skipped", reused_from=str(found.id), reason=str(exc))
            return False
        if hashlib.sha256(png).hexdigest() != found.image_sha256:
            job_log.warning("job.reuse_skipped", reused_from=str(found.id), reason="stored bytes changed")
            return False
        if path != found.storage_path:
            await self.storage.upload_png(path, png)
        return True

    async def _fail(self, run: JobRun, message: str, retryable: bool, job_log: Any) -> None:
        outcome = await self.store.fail(
            run.job,
            message,
            retryable=retryable,
            status_polls=run.polls,
            backoff_base_s=self.settings.backoff_base_seconds,
            backoff_max_s=self.settings.backoff_max_seconds,
        )
        if outcome is not None:
            JOBS_FINISHED.labels(outcome="retried" if outcome == "queued" else "failed").inc()
            self._wake.set()
        job_log.warning(
            "job.attempt_failed", error=message, retryable=retryable, outcome=outcome, attempt=run.attempt
        )

    async def _cancel_on_runpod(self, run: JobRun) -> None:
        if run.runpod_job_id is None or run.endpoint_id is None:
            return
        with contextlib.suppress(RunPodError):
            await self.runpod.cancel(run.endpoint_id, run.runpod_job_id)


def _checked_png(output: Any, width: int, height: int) -> tuple[bytes, str]:
    """The worker's PNG, checked whole, and its SHA-256."""
    png = decode_png(output, width, height)
    return png, hashlib.sha256(png).hexdigest()


def _reported(output: dict[str, Any], name: str) -> int | None:
    """A number the worker reported, or None if it reported none (or something else)."""
    value = output.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
