"""Synthetic workers: a load generator for benchmarks and dispatcher tests, no torch needed.

Each takes jobs from the platform like a worker, validates the input with the real
worker's rules, waits an execution time (fixed, or drawn from a distribution), and
delivers a valid image of the requested size and format as the real worker does: to the
input's signed upload URL, or as base64 in the result, in the real worker's output shape.
The image is one flat colour (a few hundred bytes), or, with ``payload_bytes``, a PNG of
about that size, as heavy as a real one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import io
import random
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image

from devstack.png import payload_png, solid_png
from devstack.runpod_platform import Job, Platform
from worker.adapters import AdapterRequest
from worker.errors import AdapterInvalid, AdapterUnavailable, InvalidInput, UploadFailed, WorkerError
from worker.request import Delivery, GenerationRequest, parse_job
from worker.upload import refusal, storage_status


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
        payload_bytes: int = 0,
    ) -> None:
        self.platform = platform
        self.payload_bytes = payload_bytes
        self.cold_start_s = cold_start_s  # each worker loads its model this long before taking jobs
        self.endpoint_id = endpoint_id
        self.count = count
        self.execution_time = execution_time
        self.random = random.Random(seed)
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=30, follow_redirects=False)
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
        if self._http is not None:
            await self._http.aclose()

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
            request, delivery = parse_job(job.input)
        except InvalidInput as invalid:
            self.platform.report(job.id, worker_id, {"error": invalid.to_runpod_error()})
            return
        seconds = self.execution_time.draw(self.random)
        if self.random.random() < self.platform.faults.rate_worker_death:
            self.platform.abandon(job)  # this worker "dies"; a fresh one takes its place
            return
        if request.lora is not None:
            try:
                await self._fetch_adapter(request.lora)
            except WorkerError as error:
                self.platform.report(job.id, worker_id, {"error": error.to_runpod_error()})
                return
        await self._steps(job, worker_id, request.steps, seconds)
        data = self._image(request, delivery)
        output: dict[str, Any] = {
            "width": request.width,
            "height": request.height,
            "steps": request.steps,
            "seed": request.seed,
            "format": delivery.format,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "timings": {"load_ms": 0.0, "inference_ms": round(seconds * 1000, 1), "encode_ms": 0.0},
        }
        if request.lora is not None:
            output["lora"] = {"sha256": request.lora.sha256, "weight": request.lora.weight}
        if delivery.upload_url is None:
            output["image_base64"] = base64.b64encode(data).decode("ascii")
        else:
            try:
                stored = await self._upload(delivery, data)
            except WorkerError as error:
                self.platform.report(job.id, worker_id, {"error": error.to_runpod_error()})
                return
            output |= {"storage_path": delivery.storage_path, "stored": stored}
        self.platform.report(job.id, worker_id, {"output": output})

    def _image(self, request: GenerationRequest, delivery: Delivery) -> bytes:
        if self.payload_bytes and delivery.format == "png":
            return payload_png(request.width, request.height, self.payload_bytes)
        lora = request.lora
        colour = _colour(
            request.prompt if lora is None else f"{lora.sha256}@{lora.weight}:{request.prompt}", request.seed
        )
        if delivery.format == "png":
            return solid_png(request.width, request.height, colour)
        return _solid(request.width, request.height, colour, delivery.format, delivery.output_quality)

    async def _fetch_adapter(self, lora: AdapterRequest) -> None:
        """Download and check the adapter as the real worker does (no cache: each job fetches)."""
        assert self._http is not None
        try:
            response = await self._http.get(lora.url)
        except httpx.HTTPError as exc:
            raise AdapterUnavailable(f"adapter download failed: {type(exc).__name__}") from exc
        if not response.is_success:
            raise AdapterUnavailable(f"adapter {lora.sha256[:12]}: download answered {response.status_code}")
        if hashlib.sha256(response.content).hexdigest() != lora.sha256:
            raise AdapterInvalid(f"adapter {lora.sha256[:12]}: the downloaded bytes do not match its hash")

    async def _upload(self, delivery: Delivery, data: bytes) -> str:
        """As worker/upload.py does it (one try): its reading of Storage's answers is shared."""
        assert self._http is not None
        assert delivery.upload_url is not None
        try:
            response = await self._http.put(
                delivery.upload_url, content=data, headers={"Content-Type": delivery.content_type}
            )
        except httpx.HTTPError as exc:
            raise UploadFailed(f"Storage could not be reached: {type(exc).__name__}") from exc
        if response.is_success:
            return "uploaded"
        status, message = storage_status(response.content, response.status_code, response.reason_phrase)
        if (stored := refusal(status, message, len(data), delivery.content_type)) is not None:
            return stored
        raise UploadFailed(f"Storage answered {status}: {message}")


@functools.lru_cache(maxsize=256)
def _solid(
    width: int, height: int, rgb: tuple[int, int, int], image_format: str, quality: int | None
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), rgb).save(buffer, format=image_format.upper(), quality=quality or 90)
    return buffer.getvalue()


def _colour(prompt: str, seed: int) -> tuple[int, int, int]:
    """Like a model, the same prompt and seed give the same image, and others another one:
    one of 64 colours, so that solid_png's cache holds every one a load test asks for."""
    digest = hashlib.blake2b(f"{seed}:{prompt}".encode(), digest_size=3).digest()
    return (digest[0] & 0xC0, digest[1] & 0xC0, digest[2] & 0xC0)
