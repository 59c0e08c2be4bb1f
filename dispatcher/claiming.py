"""The dispatcher: claim jobs into free slots, keep their leases, and hand each to a job runner.

One claim loop fills free slots (a global and a per-user cap) whenever it is woken (a
notification, a finished job) or the sweep timer fires. Each claimed job runs in its own task
(runner.py). A lease renewer keeps the rows ours while we work and notices when one is not (a
user cancelled it): that task stops and cancels its RunPod job. An endpoint prober asks the
endpoints that refused our key again now and then.

The three loops are long-lived background tasks: ``loops()`` names them for the supervisor
(kernel.supervisor), which restarts one that dies and reports it in /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import structlog

from dispatcher.admission import EndpointCapacity, admitted, newcomer_room
from dispatcher.domain import ClaimedJob, RunPodError, RunPodState, StoreUnavailable
from dispatcher.endpoints import EndpointPool
from dispatcher.metrics import JOBS_IN_FLIGHT
from dispatcher.polling import LatencyModel, QueueView
from dispatcher.ports import GpuEndpoint, JobStore, ObjectStorage
from dispatcher.runner import JobRun, JobRunner
from dispatcher.settings import DispatcherSettings

log = structlog.get_logger("dispatcher")

PUBLISH_CAPACITY_SECONDS = 5.0  # readers treat a row older than 30 s as a dispatcher gone


class Dispatcher:
    def __init__(
        self,
        settings: DispatcherSettings,
        store: JobStore,
        gpu: GpuEndpoint,
        storage: ObjectStorage,
        adapters: ObjectStorage,
    ) -> None:
        """``storage``: the images' bucket; ``adapters``: the characters' adapters' (private)."""
        self.settings = settings
        self.store = store
        self.gpu = gpu
        self.endpoints = EndpointPool(settings.runpod_endpoint_id, settings.endpoint_cooldown_seconds)
        self.model = LatencyModel()
        self.queue = QueueView()
        self.capacity: dict[str, EndpointCapacity] = {}  # per endpoint, from its last /health
        self.peers_held = 0  # jobs the other live replicas hold, as they last published
        self._held_peak = 0  # the most held since our last publication (what we publish)
        # Jobs that /health says have finished though their run has not seen it yet: their
        # workers are free, so they hold no admission slot (the run settles them shortly).
        self.finished_unseen: set[UUID] = set()
        self.runner = JobRunner(
            settings,
            store,
            gpu,
            storage,
            adapters,
            self.endpoints,
            self.model,
            self.queue,
            self.wake,
            self._took_worker,
        )
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

    def _took_worker(self, job_id: UUID, at: float) -> None:
        """A job waiting in RunPod's queue took a worker that freed at ``at``: replan its polls."""
        if (run := self.active.get(job_id)) is not None:
            run.expected_start = at
            run.replan.set()

    def hint_completed(self, payload: str) -> None:
        """Another replica received this job's webhook: poll it now."""
        with contextlib.suppress(ValueError):
            run = self.active.get(UUID(payload))
            if run is not None:
                run.hint.set()

    # ---- the loops -----------------------------------------------------------------
    def loops(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """The background loops, by name, for a supervisor to run (each runs until cancelled)."""
        return {
            "claim-loop": self._claim_forever,
            "lease-renewer": self._renew_leases_forever,
            "endpoint-prober": self._probe_paused_endpoints_forever,
            "capacity-watcher": self._watch_capacity_forever,
            "capacity-publisher": self._publish_capacity_forever,
        }

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
        with contextlib.suppress(StoreUnavailable):
            released = await self.store.release_leases(unfinished)
            self.log.info("dispatcher.stopped", handed_back=len(released))

    async def _claim_forever(self) -> None:
        if self.settings.admission == "capacity":
            # Before the first claim: how many to admit, and how many the other replicas hold.
            await self._read_capacity()
            await self._publish_capacity()
        while not self._stopping.is_set():
            self._wake.clear()
            admit = self._admitted()
            held = len(self.active) - len(self.finished_unseen & self.active.keys())
            free = min(self.settings.max_in_flight, admit) - held
            per_user = self.settings.max_in_flight_per_user
            if free <= 0 and self.settings.admission == "capacity" and self.capacity:
                # Full: only users with nothing in flight, one job each (admission.py).
                free = newcomer_room(held, admit, self._workers(), self.settings.max_in_flight)
                per_user = 1
            # While every endpoint refuses our key, jobs stay queued (the prober wakes us).
            if free > 0 and not self.endpoints.all_paused:
                try:
                    for job in await self.store.claim(free, per_user):
                        self._start(job)
                except StoreUnavailable as exc:
                    self.log.warning("claim.failed", error=str(exc))
                    await asyncio.sleep(1)
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.sweep_interval_seconds)

    def _start(self, job: ClaimedJob) -> None:
        run = JobRun.claimed(job)
        self.active[job.id] = run
        self._held_peak = max(self._held_peak, len(self.active))
        JOBS_IN_FLIGHT.inc()
        self._tasks[job.id] = asyncio.create_task(self._run_job(run), name=f"job-{job.id}")

    async def _run_job(self, run: JobRun) -> None:
        try:
            await self.runner.run(run)
        finally:
            self.active.pop(run.job.id, None)
            self._tasks.pop(run.job.id, None)
            JOBS_IN_FLIGHT.dec()
            self._wake.set()  # a slot is free

    async def _renew_leases_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            ids = list(self.active)
            try:
                renewed = await self.store.renew_leases(ids)
            except StoreUnavailable as exc:
                self.log.warning("lease.renew_failed", error=str(exc))
                continue
            for job_id in set(ids) - renewed:
                if (run := self.active.get(job_id)) is not None:
                    run.lost = True
                    run.hint.set()

    def _admitted(self) -> int:
        """How many jobs to hold now: by the endpoints' live capacity (admission.py), less what
        the other replicas hold (negative when they hold more), or, with ADMISSION=fixed or while
        no endpoint's /health has answered, MAX_IN_FLIGHT."""
        usable = [
            capacity
            for endpoint, capacity in self.capacity.items()
            if endpoint not in self.endpoints.unauthorized
        ]
        if self.settings.admission == "fixed" or not usable:
            return self.settings.max_in_flight
        capacity = admitted(
            usable,
            self.settings.admission_queue_depth,
            self.model.refill_s,
            self.model.typical_execution_s(),
        )
        return capacity - self.peers_held

    def _workers(self) -> int:
        """The workers the endpoints run or are starting, as their last /health said."""
        return sum(c.workers + c.initializing for c in self.capacity.values())

    async def _watch_capacity_forever(self) -> None:
        if self.settings.admission != "capacity":
            return
        while True:
            await asyncio.sleep(self.settings.capacity_poll_seconds)
            await self._read_capacity()

    async def _read_capacity(self) -> None:
        """Every usable endpoint's /health; the claim loop is woken when there is room for more."""
        before = self._admitted()
        finished: set[UUID] = set()
        for endpoint in self.endpoints.endpoint_ids:
            if endpoint in self.endpoints.unauthorized:
                continue
            asked_at = time.monotonic()
            try:
                capacity = EndpointCapacity.from_health(await self.gpu.health(endpoint))
            except RunPodError as exc:
                self.log.info("capacity.unknown", endpoint_id=endpoint, error=str(exc))
                continue
            self.capacity[endpoint] = capacity
            self.queue.workers[endpoint] = capacity.workers
            if not self.settings.webhook_public_url:
                # Polling: a job /health no longer counts has finished. Its worker is free, so
                # the claim loop may submit the next job now, and the job is looked at now
                # rather than at its planned poll.
                seen = frozenset(
                    job_id
                    for job_id, run in self.active.items()
                    if run.unfinished_until is not None and run.unfinished_until > asked_at
                )
                at_runpod = capacity.in_queue + capacity.in_progress
                for job_id in self.queue.finished_unseen(
                    endpoint, at_runpod, asked_at, expected_unfinished=seen
                ):
                    if (run := self.active.get(job_id)) is not None:
                        run.hint.set()
                        finished.add(job_id)
        newly_free = bool(finished - self.finished_unseen)
        self.finished_unseen = finished
        if newly_free or self._admitted() > before:
            self._wake.set()

    async def _publish_capacity_forever(self) -> None:
        """Every few seconds (every CAPACITY_POLL_SECONDS with capacity admission), the workers
        this dispatcher's endpoints run and the jobs it holds: what batch-status estimates start
        and finish times from (with the recorded execution times). Workers are known once
        /health has been read (ADMISSION=capacity); 0 otherwise.
        In return, what the other replicas hold: admission shares the endpoints with them.
        Once the dispatcher stops, its row goes (by itself, before the loops are cancelled: a
        statement cut short by a cancellation is not one to leave behind)."""
        # With capacity admission, as often as /health is read: the replicas' shares stay as
        # fresh as the capacity they divide (one small upsert per replica each time).
        every_s, wait_s = PUBLISH_CAPACITY_SECONDS, 0.0
        if self.settings.admission == "capacity":
            # The claim loop published before its first claim: the next one is an interval on.
            every_s = wait_s = min(every_s, self.settings.capacity_poll_seconds)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait_s)
            if self._stopping.is_set():
                break
            await self._publish_capacity()
            wait_s = every_s
        with contextlib.suppress(StoreUnavailable):
            await self.store.forget_capacity()

    async def _publish_capacity(self) -> None:
        """Publish ours and learn what the other replicas hold; the claim loop is woken when
        that leaves room for more. We publish the most we held since the last time: the moment
        between a job finishing and its slot's refill is not a share given up, and a replica
        reading it then would take that slot too."""
        before, held = self._admitted(), max(self._held_peak, len(self.active))
        self._held_peak = len(self.active)
        try:
            self.peers_held = await self.store.publish_capacity(self._workers(), held)
        except StoreUnavailable as exc:
            self.log.info("capacity.not_published", error=str(exc))
            return
        if self._admitted() > before:
            self._wake.set()

    async def _probe_paused_endpoints_forever(self) -> None:
        """An endpoint that refused our key is asked again now and then; it resumes once it
        answers (the key was fixed or rotated back), and the claim loop is woken."""
        while True:
            await asyncio.sleep(self.settings.endpoint_probe_seconds)
            for endpoint in sorted(self.endpoints.unauthorized):
                with contextlib.suppress(RunPodError):
                    await self.gpu.health(endpoint)
                    self.endpoints.resume(endpoint)
                    self._wake.set()
