"""Synthetic workers: a load generator for benchmarks and dispatcher tests, no torch needed.

Each takes jobs from the platform like a worker, validates the input with the real
worker's rules, waits an execution time (fixed, or drawn from a distribution), and
returns a small valid PNG of the requested size in the real worker's output shape.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import random
from dataclasses import dataclass

from devstack.png import solid_png
from devstack.runpod_platform import Job, Platform
from worker.errors import InvalidInput
from worker.request import parse_request


@dataclass(frozen=True)
class ExecutionTime:
    """``"2"`` (fixed seconds), ``"uniform:1:5"`` or ``"lognormal:MU:SIGMA"`` (seconds)."""

    kind: str
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> ExecutionTime:
        kind, _, rest = spec.partition(":")
        try:
            if not rest:
                return cls("fixed", float(kind))
            a, b = (float(part) for part in rest.split(":"))
        except ValueError:
            raise ValueError(
                f"execution time {spec!r}: expected SECONDS, uniform:LOW:HIGH or lognormal:MU:SIGMA"
            ) from None
        if kind not in {"uniform", "lognormal"}:
            raise ValueError(f"execution time {spec!r}: unknown distribution {kind!r}")
        return cls(kind, a, b)

    def draw(self, rng: random.Random) -> float:
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        if self.kind == "lognormal":
            return rng.lognormvariate(self.a, self.b)
        return self.a


class SyntheticWorkers:
    def __init__(
        self,
        platform: Platform,
        endpoint_id: str,
        count: int,
        execution_time: ExecutionTime,
        seed: int | None = None,
        cold_start_s: float = 0.0,
    ) -> None:
        self.platform = platform
        self.cold_start_s = cold_start_s  # each worker loads its model this long before taking jobs
        self.endpoint_id = endpoint_id
        self.count = count
        self.execution_time = execution_time
        self.random = random.Random(seed)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(
                self._work(f"synthetic-{self.endpoint_id}-{index}"), name=f"synthetic-{index}"
            )
            for index in range(self.count)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _work(self, worker_id: str) -> None:
        if self.cold_start_s > 0:
            self.platform.initializing.add(worker_id)
            await asyncio.sleep(self.cold_start_s)
            self.platform.initializing.discard(worker_id)
            self.platform.counters.init_seconds += self.cold_start_s
        while not self.platform.closed:
            for job in await self.platform.take(self.endpoint_id, worker_id, 1, timeout_s=1.0):
                await self._run(job, worker_id)

    async def _steps(self, job: Job, worker_id: str, steps: int, seconds: float) -> None:
        """Spend the execution time step by step, reporting progress as the real worker does."""
        if seconds <= 0:
            return
        for step in range(1, steps + 1):
            await asyncio.sleep(seconds / steps)
            progress = {"step": step, "steps": steps, "elapsed_ms": round(seconds / steps * step * 1000)}
            self.platform.report(job.id, worker_id, {"status": "IN_PROGRESS", "output": progress})

    async def _run(self, job: Job, worker_id: str) -> None:
        try:
            request = parse_request(job.input)
        except InvalidInput as invalid:
            self.platform.report(job.id, worker_id, {"error": invalid.to_runpod_error()})
            return
        seconds = self.execution_time.draw(self.random)
        if self.random.random() < self.platform.faults.rate_worker_death:
            self.platform.abandon(job)  # this worker "dies"; a fresh one takes its place
            return
        await self._steps(job, worker_id, request.steps, seconds)
        png = solid_png(request.width, request.height, _colour(request.prompt, request.seed))
        self.platform.report(
            job.id,
            worker_id,
            {
                "output": {
                    "image_base64": base64.b64encode(png).decode("ascii"),
                    "width": request.width,
                    "height": request.height,
                    "steps": request.steps,
                    "seed": request.seed,
                    "timings": {"load_ms": 0.0, "inference_ms": round(seconds * 1000, 1), "encode_ms": 0.0},
                }
            },
        )


def _colour(prompt: str, seed: int) -> tuple[int, int, int]:
    """Like a model, the same prompt and seed give the same image, and others another one:
    one of 64 colours, so that solid_png's cache holds every one a load test asks for."""
    digest = hashlib.blake2b(f"{seed}:{prompt}".encode(), digest_size=3).digest()
    return (digest[0] & 0xC0, digest[1] & 0xC0, digest[2] & 0xC0)
