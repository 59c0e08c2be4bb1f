"""The RunPod handler: a job's input in, a base64 PNG (or a contract error) out."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import structlog

from worker.errors import OutOfMemory, OutputTooLarge, WorkerError
from worker.pipeline import ImageGenerator
from worker.request import parse_request

# RunPod accepts results up to about 10 MB through /run; keep a margin for the envelope.
MAX_OUTPUT_BASE64_BYTES = 9 * 1024 * 1024

log = structlog.get_logger("worker.handler")

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def make_handler(
    generator: ImageGenerator,
    *,
    refresh_worker_on_oom: bool = True,
    max_output_bytes: int = MAX_OUTPUT_BASE64_BYTES,
) -> Handler:
    def handle(job: dict[str, Any]) -> dict[str, Any]:
        job_log = log.bind(job_id=job.get("id"))
        try:
            return _generate(generator, job.get("input"), job_log, max_output_bytes)
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


def _generate(
    generator: ImageGenerator, raw_input: Any, job_log: Any, max_output_bytes: int
) -> dict[str, Any]:
    request = parse_request(raw_input)
    image = generator.generate(request)
    encoded = base64.b64encode(image.png).decode("ascii")
    if len(encoded) > max_output_bytes:
        raise OutputTooLarge(
            f"the {image.width}x{image.height} PNG is {len(encoded)} bytes as base64, over the "
            f"result limit of {max_output_bytes}; ask for a smaller size"
        )
    timings = {
        "load_ms": round(generator.load_ms, 1),
        "inference_ms": round(image.inference_ms, 1),
        "encode_ms": round(image.encode_ms, 1),
    }
    job_log.info(
        "job.generated",
        width=image.width,
        height=image.height,
        steps=request.steps,
        prompt_chars=len(request.prompt),
        png_bytes=len(image.png),
        **timings,
    )
    return {
        "image_base64": encoded,
        "width": image.width,
        "height": image.height,
        "steps": request.steps,
        "seed": request.seed,
        "timings": timings,
    }
