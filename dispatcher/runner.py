"""One claimed job, from claim to a final row: reuse a stored image if an identical seeded one
exists, else submit (or resume the RunPod job a dead dispatcher left behind), wait for completion
by webhook or adaptive polling, check the image the worker uploaded (or upload the one it
returned as base64), and move the row to succeeded.

Uploaded images: each submission carries a fresh signed upload URL for the job's upload key (its
own key, see ``ClaimedJob.upload_path``), which Storage lets write once. So every run of a job
uploads to the same key and the first upload is the one kept; a later run finds it there, and
the dispatcher checks and keeps what is stored, whoever put it. When Storage refuses to sign
because an object is already there (a run whose answer was lost got that far), the job succeeds
from it without another run. A run RunPod reports FAILED leaves nothing to stand in for it:
whatever it uploaded is removed.

The job's ids are bound into the log context (structlog contextvars) for the life of its task,
so every line logged on its behalf, here or in an adapter, names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog

from dispatcher.domain import (
    BadResult,
    ClaimedJob,
    DispatchError,
    JobStatus,
    RequestTally,
    ReusableImage,
    RunPodError,
    RunPodJobGone,
    RunPodOutcomeUnknown,
    RunPodRejected,
    RunPodState,
    RunPodStatus,
    RunPodUnauthorized,
    RunPodUnavailable,
    StorageError,
    StorageRejected,
    StoreUnavailable,
    Success,
    WorkerFailure,
)
from dispatcher.endpoints import EndpointPool
from dispatcher.images import decode_image, verify_image
from dispatcher.metrics import (
    COMPLETION_TO_STORED,
    INSERT_TO_SUBMIT,
    JOBS_FINISHED,
    RESUBMISSIONS,
    STATUS_POLLS_PER_JOB,
)
from dispatcher.polling import FixedSchedule, LatencyModel, PollSchedule, QueueView
from dispatcher.ports import GpuEndpoint, JobStore, ObjectStorage
from dispatcher.settings import DispatcherSettings
from dispatcher.webhook import webhook_url

log = structlog.get_logger("dispatcher")


class LostJob(Exception):
    """This dispatcher no longer owns the job (cancelled by its user, or taken over)."""


class AlreadyStored(Exception):
    """An object is already at the job's key: check it and, if it is good, the job is done."""


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
    hint: asyncio.Event = field(default_factory=asyncio.Event)  # poll now (or read the webhook)
    replan: asyncio.Event = field(default_factory=asyncio.Event)  # its expected start changed
    expected_start: float | None = None  # monotonic; when the QueueView says it (will have) started
    webhook_state: RunPodState | None = None
    lost: bool = False
    maybe_submitted: bool = False  # a submission whose RunPod id we never learnt may exist
    marked_running: bool = False
    progress: dict[str, int] | None = None  # the worker's last step report, as recorded
    # monotonic: until when the last poll that found it queued or running expects it unfinished
    # (a running job's predicted finish; else that poll's time): /health names others meanwhile
    unfinished_until: float | None = None

    @classmethod
    def claimed(cls, job: ClaimedJob) -> JobRun:
        return cls(
            job,
            job.attempts,
            job.submissions,
            job.runpod_endpoint_id,
            job.runpod_job_id,
            maybe_submitted=job.previous_status != JobStatus.QUEUED and job.runpod_job_id is None,
            marked_running=job.previous_status == JobStatus.RUNNING,
        )


@dataclass
class JobRunner:
    """Runs one job at a time per call of ``run``; shared by every job task of a dispatcher."""

    settings: DispatcherSettings
    store: JobStore
    gpu: GpuEndpoint
    storage: ObjectStorage
    adapters: ObjectStorage  # the characters' adapters: read by the workers through signed URLs
    endpoints: EndpointPool
    model: LatencyModel
    queue: QueueView
    wake: Callable[[], None]  # a slot may be free, or a job went back to the queue
    started_elsewhere: Callable[[UUID, float], None]  # a waiting job took a worker that freed

    async def run(self, run: JobRun) -> None:
        structlog.contextvars.bind_contextvars(
            dispatcher_id=self.settings.dispatcher_id, job_id=str(run.job.id), batch_id=str(run.job.batch_id)
        )
        try:
            if await self._reuse(run):
                return
            try:
                state = await self._run_on_runpod(run)
            except AlreadyStored:
                await self._settle(run, None)
            else:
                await self._settle(run, state)
        except Deferred as deferred:
            if await self.store.defer(run.job.id, str(deferred), self.settings.endpoint_probe_seconds):
                log.warning("job.deferred", reason=str(deferred))
        except LostJob:
            log.info("job.lost", reason="the row is no longer ours (cancelled or taken over)")
            await self.cancel_on_runpod(run)
        except StoreUnavailable as error:
            # The lease runs out and the job is claimed again: nothing is lost.
            log.warning("job.database_error", error=str(error))
        except DispatchError as error:
            await self._fail(run, str(error), error.retryable)
        except Exception as error:  # a bug: record it on the row, retry within max_attempts
            log.exception("job.internal_error")
            with contextlib.suppress(StoreUnavailable):
                await self._fail(run, f"internal error: {type(error).__name__}: {error}", True)
        finally:
            if run.endpoint_id is not None:
                self.queue.forget(run.endpoint_id, run.job.id)

    async def _run_on_runpod(self, run: JobRun) -> RunPodState:
        """Submit (or resume) until RunPod finishes the job; resubmissions are counted and explained."""
        for _ in range(run.job.max_attempts + 2):
            if run.runpod_job_id is None:
                if run.maybe_submitted:  # a dead dispatcher's, or one whose answer was lost
                    if (state := await self._await_lost_submission(run)) is not None:
                        return self._finished(run, state)
                    await self._resubmit(run, "a submission's answer was lost")
                await self._submit(run)
                if run.runpod_job_id is None:
                    continue
            try:
                return await self._await_completion(run)
            except RunPodJobGone:
                await self._resubmit(run, "RunPod no longer knows the job (its result expired)")
        raise RunPodUnavailable("gave up resubmitting")

    async def _submit(self, run: JobRun) -> None:
        job, settings = run.job, self.settings
        worker_input = job.worker_input()
        if settings.image_delivery == "upload":
            upload_url = await self.storage.signed_upload_url(job.upload_path)
            if upload_url is None:
                raise AlreadyStored
            worker_input |= {"upload_url": upload_url, "storage_path": job.upload_path}
        if job.adapter_path is not None:
            try:
                url = await self.adapters.signed_download_url(job.adapter_path, settings.adapter_url_seconds)
            except StorageRejected as error:
                raise StorageRejected(f"the character's adapter: {error}") from error
            worker_input["lora"] = {"url": url, "sha256": job.adapter_sha256, "weight": job.character_weight}
        payload: dict[str, Any] = {
            "input": worker_input,
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
        asked_at = time.monotonic()
        endpoint, runpod_job_id = await self._submit_anywhere(payload, run)
        if runpod_job_id is None:
            return
        self.model.learn_submit(time.monotonic() - asked_at)
        self.endpoints.succeeded(endpoint)
        run.endpoint_id, run.runpod_job_id, run.submitted_at = endpoint, runpod_job_id, time.monotonic()
        idle = self.queue.idle_workers(endpoint) > 0
        self.queue.submitted(endpoint, job.id, run.submitted_at, idle_worker=idle)
        # A worker free: it starts now. Else it waits its turn: when a worker frees for it (the
        # QueueView replans it then), or, failing that, by its place in the queue.
        execution_s = self.model.expected(job.size_key).execution_s
        run.expected_start = (
            run.submitted_at
            if idle
            else self.queue.estimated_start(endpoint, job.id, execution_s, run.submitted_at)
        )
        if not await self.store.mark_submitted(job.id, runpod_job_id, endpoint):
            raise LostJob
        INSERT_TO_SUBMIT.observe((datetime.now(UTC) - job.created_at).total_seconds())
        log.info("job.submitted", runpod_job_id=runpod_job_id, endpoint_id=endpoint, attempt=run.attempt)

    async def _submit_anywhere(self, payload: dict[str, Any], run: JobRun) -> tuple[str, str | None]:
        """Submit to the first endpoint that takes our key: (endpoint, RunPod job id, or None if
        the answer was lost). An endpoint that refuses the key is paused, not the job's fault:
        when none is left, the job goes back to the queue unpenalised (Deferred)."""
        while True:
            try:
                endpoint = self.endpoints.pick()
            except RunPodUnauthorized as exc:
                raise Deferred(str(exc)) from exc
            try:
                return endpoint, await self.gpu.submit(endpoint, payload)
            except RunPodUnauthorized as exc:
                self.endpoints.pause(endpoint, str(exc))
                continue
            except RunPodOutcomeUnknown:
                run.maybe_submitted = True
                log.warning("job.submit_answer_lost", endpoint_id=endpoint)
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

    async def _resubmit(self, run: JobRun, reason: str) -> None:
        numbers = await self.store.resubmit(run.job.id, reason)
        if numbers is None:
            raise LostJob
        run.attempt, run.submission = numbers
        if run.endpoint_id is not None:
            self.queue.forget(run.endpoint_id, run.job.id)
        run.runpod_job_id = run.endpoint_id = run.webhook_state = run.expected_start = None
        run.maybe_submitted = False
        RESUBMISSIONS.labels(reason=reason).inc()
        log.warning("job.resubmitted", attempt=run.attempt, submission=run.submission, reason=reason)

    async def _await_completion(self, run: JobRun) -> RunPodState:
        assert run.runpod_job_id is not None
        assert run.endpoint_id is not None
        schedule = self._schedule(run)
        budget_ends = (
            schedule.submitted_at
            + self.settings.queue_budget_seconds
            + self.settings.execution_timeout_seconds
        )
        delay = schedule.first_delay()
        while True:
            replanned = await _woken(run, delay)
            if run.lost:
                raise LostJob
            if run.webhook_state is not None and run.webhook_state.finished:
                return self._finished(run, run.webhook_state)
            if replanned:  # a worker freed: it most likely took this job, so look accordingly
                schedule.expected_start = run.expected_start
                delay = (
                    schedule.first_delay()
                    if schedule.polls == 0
                    else schedule.delay_while_queued(time.monotonic())
                )
                continue
            tally = RequestTally()
            try:
                state = await self.gpu.status(run.endpoint_id, run.runpod_job_id, tally)
            except RunPodUnauthorized as exc:  # the job runs on; ask again once the key works
                self.endpoints.pause(run.endpoint_id, str(exc))
                delay = self.settings.endpoint_probe_seconds
                continue
            except RunPodRejected:  # it would run on, and bill, with nobody waiting for it
                await self.cancel_on_runpod(run)
                raise
            finally:
                run.polls += tally.requests  # every request sent, answered or not
            if state.finished:
                return self._finished(run, state)
            if state.status == RunPodStatus.IN_PROGRESS:
                self._started(run, state)
                if not run.marked_running:
                    await self._mark_running(run, state)
                if (progress := _step_progress(state.output)) is not None and progress != run.progress:
                    run.progress = progress
                    await self.store.record_progress(run.job.id, progress)
            elif state.status == RunPodStatus.IN_QUEUE and run.expected_start is None:
                expected = self.model.expected(run.job.size_key)
                run.expected_start = self.queue.estimated_start(
                    run.endpoint_id, run.job.id, expected.execution_s, time.monotonic()
                )
                schedule.expected_start = run.expected_start
            if time.monotonic() > budget_ends:
                log.warning("job.over_budget", runpod_job_id=run.runpod_job_id)
                await self.cancel_on_runpod(run)
                raise RunPodUnavailable("the job exceeded its time budget on RunPod and was cancelled")
            delay = schedule.next_delay(state)
            # Running with step progress: its finish is predicted, and the next look comes just
            # after it. Otherwise (queued, no progress) it is known unfinished only now.
            predicted = state.status == RunPodStatus.IN_PROGRESS and run.progress is not None
            run.unfinished_until = time.monotonic() + (
                max(delay - schedule.health_watch_s, 0.0) if predicted else 0.0
            )

    def _started(self, run: JobRun, state: RunPodState) -> float | None:
        """When the worker took the job, from RunPod's delayTime; recorded in the QueueView."""
        if state.delay_ms is None or run.endpoint_id is None:
            return None
        started = run.submitted_at + state.delay_ms / 1000
        self.queue.started(run.endpoint_id, run.job.id, started)
        return started

    def _finished(self, run: JobRun, state: RunPodState) -> RunPodState:
        """Learn from a finished job, whoever reported it, and tell the job that took its worker."""
        self.model.learn(run.job.size_key, state)
        started = self._started(run, state)
        if run.endpoint_id is not None:
            ended = now = time.monotonic()
            if started is not None and state.execution_ms is not None:
                ended = started + state.execution_ms / 1000
                self.model.learn_detection(now - ended)  # admission's queue depth covers it
            successor = self.queue.finished(run.endpoint_id, run.job.id, ended)
            if successor is not None:
                self.started_elsewhere(successor, ended)
        return state

    async def _mark_running(self, run: JobRun, state: RunPodState) -> None:
        queue_s = None if state.delay_ms is None else state.delay_ms / 1000
        await self.store.mark_running(run.job.id, queue_s)
        run.marked_running = True

    def _schedule(self, run: JobRun) -> PollSchedule:
        submitted_at = run.submitted_at or time.monotonic()
        if (interval := self.settings.fixed_poll_interval_seconds) is not None:
            return FixedSchedule(self.model, run.job.size_key, submitted_at, interval_s=interval)
        return PollSchedule(
            self.model,
            run.job.size_key,
            submitted_at,
            webhook=bool(self.settings.webhook_public_url),
            finish_quantile=self.settings.poll_finish_quantile,
            expected_start=run.expected_start,
            # claiming.py reads /health with capacity admission and names finished jobs (polling)
            health_watch_s=self.settings.capacity_poll_seconds
            if self.settings.admission == "capacity"
            else 0.0,
        )

    async def _settle(self, run: JobRun, state: RunPodState | None) -> None:
        """Check the image and move the row to succeeded (or failed). ``state`` is None when the
        image was found already stored, with no run of ours to report on it."""
        job, seen = run.job, time.monotonic()
        if state is not None:
            if not run.marked_running and state.delay_ms is not None and state.execution_ms is not None:
                # It ran (a webhook, or a first look that found it finished, says so only now).
                await self._mark_running(run, state)
            if state.status == RunPodStatus.FAILED:
                failure = WorkerFailure.parse(state.error)
                if self.settings.image_delivery == "upload":
                    with contextlib.suppress(StorageError):
                        await self.storage.remove(job.upload_path)
                # The run's fault, not the services': another worker takes it at once.
                await self._fail(run, failure.message, failure.retryable, backoff=False)
                return
            if state.status != RunPodStatus.COMPLETED:
                raise RunPodUnavailable(f"RunPod ended the job {state.status}")
        output = state.output if state is not None and isinstance(state.output, dict) else {}
        if state is None or "storage_path" in output:
            data, digest = await self._check_stored(job, output)
            if job.upload_path != job.storage_path:
                await self.storage.upload(job.storage_path, data, job.content_type)
            url = self.storage.public_url(job.storage_path)
        else:
            # Checking every pixel and hashing take milliseconds of CPU: off the event loop.
            data, digest = await asyncio.to_thread(_checked_image, output, job.format, job.width, job.height)
            url = await self.storage.upload(job.storage_path, data, job.content_type)
        timings = {"queue_ms": state.delay_ms, "execution_ms": state.execution_ms} if state else {}
        stored = await self.store.succeed(
            Success(
                job.id,
                image_url=url,
                image_sha256=digest,
                width=job.width,
                height=job.height,
                steps=_reported(output, "steps") or job.steps,
                seed=seed if (seed := _reported(output, "seed")) is not None else job.seed,
                timings={**timings, **_timings(output), **({} if state else {"found_stored": True})},
                status_polls=run.polls,
            )
        )
        if not stored:
            raise LostJob
        if job.upload_path != job.storage_path and self.settings.image_delivery == "upload":
            with contextlib.suppress(StorageError):  # a leftover costs bytes, not correctness
                await self.storage.remove(job.upload_path)
        COMPLETION_TO_STORED.observe(time.monotonic() - seen)
        STATUS_POLLS_PER_JOB.observe(run.polls)
        JOBS_FINISHED.labels(outcome="succeeded").inc()
        log.info("job.succeeded", storage_path=job.storage_path, status_polls=run.polls, attempt=run.attempt)

    async def _check_stored(self, job: ClaimedJob, output: dict[str, Any]) -> tuple[bytes, str]:
        """The image at the job's upload key, read back and checked whole, and its SHA-256. A bad
        one is removed, so that the next attempt can upload there (BadResult: retryable)."""
        if output and output.get("storage_path") != job.upload_path:
            elsewhere = output.get("storage_path")
            raise BadResult(f"the worker stored its image at {elsewhere!r}, not at the job's key")
        data = await self.storage.download(job.upload_path)
        try:
            digest = await asyncio.to_thread(_checked_stored, data, job.format, job.width, job.height)
        except BadResult:
            await self.storage.remove(job.upload_path)
            raise
        if output and output.get("sha256") != digest:
            # Another run of this job uploaded first: its image is the one kept.
            log.info("job.kept_earlier_upload", reported_sha256=output.get("sha256"), stored_sha256=digest)
        return data, digest

    async def _reuse(self, run: JobRun) -> bool:
        """An identical seeded request already succeeded: reuse its image, skip the GPU."""
        job = run.job
        if (
            not self.settings.reuse_seeded_images
            or job.seed is None
            or job.previous_status != JobStatus.QUEUED
        ):
            return False
        found = await self.store.find_reusable(job)
        if found is None or not await self._copy_verified(found, job.storage_path, job.content_type):
            return False
        stored = await self.store.succeed(
            Success(
                job.id,
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
        )
        if stored:
            JOBS_FINISHED.labels(outcome="reused").inc()
            log.info("job.reused", reused_from=str(found.id))
        return True

    async def _copy_verified(self, found: ReusableImage, path: str, content_type: str) -> bool:
        """Put the earlier job's bytes at ``path``, only if what sits at its key still hashes to
        what that job recorded (its owner may have written the key again since): never someone
        else's later image."""
        try:
            data = await self.storage.download(found.storage_path)
        except StorageError as exc:
            log.info("job.reuse_skipped", reused_from=str(found.id), reason=str(exc))
            return False
        if hashlib.sha256(data).hexdigest() != found.image_sha256:
            log.warning("job.reuse_skipped", reused_from=str(found.id), reason="stored bytes changed")
            return False
        if path != found.storage_path:
            await self.storage.upload(path, data, content_type)
        return True

    async def _fail(self, run: JobRun, message: str, retryable: bool, backoff: bool = True) -> None:
        """Record a failed attempt: retried (after a backoff, unless ``backoff`` is False: a
        worker's failure says nothing about the services' load) or failed for good."""
        base_s = self.settings.backoff_base_seconds if backoff else 0.0
        outcome = await self.store.fail(
            run.job,
            message,
            retryable=retryable,
            status_polls=run.polls,
            backoff_base_s=base_s,
            backoff_max_s=self.settings.backoff_max_seconds,
        )
        if outcome is not None:
            JOBS_FINISHED.labels(outcome="retried" if outcome == JobStatus.QUEUED else "failed").inc()
            self.wake()
        full = min(base_s * 2 ** (run.attempt - 1), self.settings.backoff_max_seconds)
        if outcome == JobStatus.QUEUED and full > 0:
            # It is due after a jittered backoff (half to all of base x 2^(attempt-1), capped: see
            # dispatcher_fail_job); nothing announces that moment, so look then, not at the sweep.
            # (Without a backoff it is due now: the wake above is the one it needs.)
            loop = asyncio.get_running_loop()
            for delay in (0.5 * full + 0.05, full + 0.05):
                loop.call_later(delay, self.wake)
        log.warning(
            "job.attempt_failed", error=message, retryable=retryable, outcome=outcome, attempt=run.attempt
        )

    async def cancel_on_runpod(self, run: JobRun) -> None:
        if run.runpod_job_id is None or run.endpoint_id is None:
            return
        with contextlib.suppress(RunPodError):
            await self.gpu.cancel(run.endpoint_id, run.runpod_job_id)


def _checked_image(output: Any, image_format: str, width: int, height: int) -> tuple[bytes, str]:
    """The worker's base64 image, checked whole, and its SHA-256."""
    data = decode_image(output, image_format, width, height)
    return data, hashlib.sha256(data).hexdigest()


def _checked_stored(data: bytes, image_format: str, width: int, height: int) -> str:
    """The SHA-256 of a stored image, once it is checked whole."""
    verify_image(data, image_format, width, height)
    return hashlib.sha256(data).hexdigest()


def _step_progress(output: Any) -> dict[str, int] | None:
    """The worker's {step, steps, elapsed_ms} in a running job's output, if it reported one."""
    if not isinstance(output, dict):
        return None
    values = {key: output.get(key) for key in ("step", "steps", "elapsed_ms")}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values.values()):
        return None
    return values  # type: ignore[return-value]


def _timings(output: dict[str, Any]) -> dict[str, Any]:
    timings = output.get("timings")
    return timings if isinstance(timings, dict) else {}


def _reported(output: dict[str, Any], name: str) -> int | None:
    """A number the worker reported, or None if it reported none (or something else)."""
    value = output.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def _woken(run: JobRun, delay: float) -> bool:
    """Wait ``delay`` seconds, less if hinted (poll now) or replanned: True for a replan only."""
    waiters = [asyncio.ensure_future(run.hint.wait()), asyncio.ensure_future(run.replan.wait())]
    try:
        await asyncio.wait(waiters, timeout=max(delay, 0.0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    replanned = run.replan.is_set() and not run.hint.is_set()
    run.hint.clear()
    run.replan.clear()
    return replanned
