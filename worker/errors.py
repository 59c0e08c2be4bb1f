"""The worker's error contract with the dispatcher.

A failed job's ``error`` on RunPod is a JSON string. Ours carry the SDK's own
keys (``error_type``, ``error_message``) plus ``retryable``:

    {"error_type": "invalid_input", "error_message": "quality: ...", "retryable": false}

``retryable: false`` means the same input will fail again: fail the row, never
resubmit. ``retryable: true`` means another attempt may succeed (GPU out of
memory, a transient fault). An error without ``retryable`` comes from the
runpod SDK itself (an exception escaped the handler) or from the platform
(TIMED_OUT, a lost worker): treat it as retryable, bounded by max_attempts.

This module imports nothing heavy, so the dispatcher can share the vocabulary.
"""

from __future__ import annotations

import json
from typing import ClassVar


class WorkerError(Exception):
    """Base of the errors the handler answers with instead of raising."""

    error_type: ClassVar[str] = "worker_error"
    retryable: ClassVar[bool] = True

    def to_runpod_error(self) -> str:
        return json.dumps(
            {"error_type": self.error_type, "error_message": str(self), "retryable": self.retryable}
        )


class InvalidInput(WorkerError):
    """The job's input breaks the schema; the message names the field."""

    error_type = "invalid_input"
    retryable = False


class OutOfMemory(WorkerError):
    """The GPU ran out of memory; the cache was freed and another attempt may fit."""

    error_type = "out_of_memory"
    retryable = True


class OutputTooLarge(WorkerError):
    """The encoded image would not fit in RunPod's result payload."""

    error_type = "output_too_large"
    retryable = False


class UploadFailed(WorkerError):
    """The image could not be put at its signed upload URL (Storage down or unreachable, the
    URL expired): another attempt, with a fresh URL, may succeed."""

    error_type = "upload_failed"
    retryable = True


class OutputRefused(WorkerError):
    """Storage refused the image itself (the bucket's size or type limits)."""

    error_type = "output_refused"
    retryable = False


class AdapterInvalid(WorkerError):
    """The job's LoRA adapter can never be used: its bytes do not match its hash, it is not a
    safetensors file, or it does not fit this model."""

    error_type = "adapter_invalid"
    retryable = False


class AdapterUnavailable(WorkerError):
    """The adapter could not be downloaded (an expired URL, Storage down): another attempt,
    with a fresh URL, may succeed."""

    error_type = "adapter_download_failed"
    retryable = True
