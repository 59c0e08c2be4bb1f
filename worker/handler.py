"""The RunPod handler: a job's input in; the image uploaded to its signed Storage URL (or, without
one, returned as base64) and what describes it out, or a contract error."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import structlog

from worker.adapters import AdapterCache
from worker.encoding import encode
from worker.errors import AdapterInvalid, OutOfMemory, OutputTooLarge, WorkerError
from worker.pipeline import ImageGenerator, StepCallback
from worker.request import parse_job
from worker.settings import WorkerSettings
from worker.upload import upload

# RunPod accepts results up to about 10 MB through /run; keep a margin for the envelope. Only
# base64 results carry the image: an uploaded one has no such limit.
MAX_OUTPUT_BASE64_BYTES = 9 * 1024 * 1024

log = structlog.get_logger("worker.handler")

Handler = Callable[[dict[str, Any]], dict[str, Any]]


# How a job's progress reaches RunPod (runpod.serverless.progress_update on the platform).
ProgressReporter = Callable[[dict[str, Any], dict[str, Any]], None]
PROGRESS_INTERVAL_S = 0.5


def make_handler(
    generator: ImageGenerator,
    *,
    refresh_worker_on_oom: bool = True,
    max_output_bytes: int = MAX_OUTPUT_BASE64_BYTES,
    report_progress: ProgressReporter | None = None,
    adapter_cache: AdapterCache | None = None,
) -> Handler:
    """``adapter_cache``: where character adapters are kept (default: WorkerSettings')."""
    if adapter_cache is None:
        defaults = WorkerSettings()
        adapter_cache = AdapterCache(defaults.adapter_cache_dir, defaults.lora_cache_bytes)
    cache = adapter_cache

    def handle(job: dict[str, Any]) -> dict[str, Any]:
        job_log = log.bind(job_id=job.get("id"))
        on_step = _progress(job, report_progress) if report_progress is not None else None
        try:
            return _generate(generator, cache, job.get("input"), job_log, max_output_bytes, on_step)
        except WorkerError as error:
            job_log.warning(
                "job.failed", error_type=error.error_type, retryable=error.retryable, error=str(error)
            )
            answer: dict[str, Any] = {"error": error.to_runpod_error()}
            if isinstance(error, OutOfMemory) and refresh_worker_on_oom:
                # Recycle this worker once the job is answered: fragmented GPU
                # memory would otherwise poison the jobs that follow.
                answer["refresh_worker"] = True
            return answer

    return handle


def _progress(job: dict[str, Any], report: ProgressReporter) -> StepCallback:
    """Report the first step, then at most every PROGRESS_INTERVAL_S: the dispatcher predicts
    the finish from it (elapsed / step * steps) and polls once, just after."""
    last = -PROGRESS_INTERVAL_S

    def on_step(step: int, steps: int, elapsed_s: float) -> None:
        nonlocal last
        if step == 1 or elapsed_s - last >= PROGRESS_INTERVAL_S:
            last = elapsed_s
            report(job, {"step": step, "steps": steps, "elapsed_ms": round(elapsed_s * 1000)})

    return on_step


def _generate(
    generator: ImageGenerator,
    adapter_cache: AdapterCache,
    raw_input: Any,
    job_log: Any,
    max_output_bytes: int,
    on_step: StepCallback | None = None,
) -> dict[str, Any]:
    request, delivery = parse_job(raw_input)
    adapter = adapter_cache.fetch(request.lora) if request.lora is not None else None
    try:
        image = generator.generate(request, on_step, adapter)
    except AdapterInvalid:
        if adapter is not None:  # verified bytes that do not load: keep no copy of them
            adapter_cache.discard(adapter.sha256)
        raise
    encoded = encode(image.image, delivery)
    timings = {
        "load_ms": round(generator.load_ms, 1),
        "inference_ms": round(image.inference_ms, 1),
        "encode_ms": round(encoded.encode_ms, 1),
    }
    if adapter is not None:
        timings["lora_download_ms"] = round(adapter.download_ms, 1)
    if image.adapter is not None:
        timings["lora_load_ms"] = round(image.adapter.load_ms, 1)
        timings["lora_switch_ms"] = round(image.adapter.switch_ms, 1)
    described: dict[str, Any] = {
        "width": image.width,
        "height": image.height,
        "steps": request.steps,
        "seed": request.seed,
        "format": encoded.format,
        "bytes": len(encoded.data),
        "sha256": encoded.sha256,
    }
    if adapter is not None:
        described["lora"] = {"sha256": adapter.sha256, "weight": adapter.weight}
    if delivery.upload_url is not None:
        started = time.perf_counter()
        stored = upload(delivery.upload_url, encoded.data, encoded.content_type)
        timings["upload_ms"] = round((time.perf_counter() - started) * 1000, 1)
        answer = {"storage_path": delivery.storage_path, "stored": stored, **described}
    else:
        image_base64 = base64.b64encode(encoded.data).decode("ascii")
        if len(image_base64) > max_output_bytes:
            raise OutputTooLarge(
                f"the {image.width}x{image.height} {encoded.format} is {len(image_base64)} bytes as "
                f"base64, over the result limit of {max_output_bytes}; ask for a smaller size, a "
                "lossy format, or deliver it by upload URL"
            )
        answer = {"image_base64": image_base64, **described}
    job_log.info(
        "job.generated",
        prompt_chars=len(request.prompt),
        delivered="upload" if delivery.upload_url is not None else "base64",
        **{key: value for key, value in described.items() if key not in ("sha256", "lora")},
        lora=adapter.sha256[:12] if adapter is not None else None,
        **timings,
    )
    return {**answer, "timings": timings}
