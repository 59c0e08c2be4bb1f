"""Domain types and the one exception hierarchy of the dispatcher.

    DispatchError
    ├── RunPodError
    │   ├── RunPodUnavailable    retryable: connection refused, timeout, 429, 5xx
    │   │   └── RunPodThrottled  429, with the Retry-After RunPod asked for
    │   ├── RunPodOutcomeUnknown the request may have been carried out, its answer was lost
    │   ├── RunPodRejected       a 4xx other than 401/403/404/429: never retried
    │   ├── RunPodUnauthorized   401/403: the deployment's key or endpoint is wrong, not the job
    │   └── RunPodJobGone        unknown job (404, or a FAILED "not found"): result expired, ttl passed
    ├── StorageError             upload or download failed (retryable)
    │   └── StorageRejected      Storage refused the request itself (a bad key, type, size)
    ├── BadResult                the worker's output is not a PNG of the requested size
    └── StoreUnavailable         the job store (Postgres) failed a statement: nothing is
                                 recorded on the row; its lease runs out and it is claimed again

Whether a failure is worth another attempt is a property of the type, never
read from a message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

# The job's format, as its storage key's extension and the bucket's allowed types name it.
CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}


class JobStatus(StrEnum):
    """image_jobs.status (its check constraint lists the same six)."""

    QUEUED = "queued"
    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunPodStatus(StrEnum):
    """A RunPod job's status, as /status and the webhook report it."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    UNKNOWN = "UNKNOWN"  # anything else RunPod may answer: not finished, so it is asked again

    @classmethod
    def _missing_(cls, value: object) -> RunPodStatus:
        return cls.UNKNOWN

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset(
    {RunPodStatus.COMPLETED, RunPodStatus.FAILED, RunPodStatus.CANCELLED, RunPodStatus.TIMED_OUT}
)


class DispatchError(Exception):
    retryable: bool = True


class RunPodError(DispatchError):
    pass


class RunPodUnavailable(RunPodError):
    pass


class RunPodThrottled(RunPodUnavailable):
    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RunPodOutcomeUnknown(RunPodError):
    pass


class RunPodRejected(RunPodError):
    retryable = False


class RunPodJobGone(RunPodError):
    pass


class RunPodUnauthorized(RunPodError):
    """The endpoint refuses our key: it is paused and its jobs wait, unpenalised, in Postgres."""


class StorageError(DispatchError):
    pass


class StorageRejected(StorageError):
    retryable = False


class BadResult(DispatchError):
    pass


class StoreUnavailable(DispatchError):
    """Raised by the job store adapter for any driver error, so the core imports no driver."""


@dataclass(frozen=True)
class ClaimedJob:
    id: UUID
    batch_id: UUID
    user_id: UUID | None
    position: int
    prompt: str
    quality: str
    aspect_ratio: str
    seed: int | None
    attempts: int
    max_attempts: int
    width: int
    height: int
    steps: int
    runpod_job_id: str | None
    runpod_endpoint_id: str | None
    previous_status: JobStatus
    created_at: datetime
    storage_path: str  # computed when the row was inserted
    submissions: int  # RunPod submissions so far, never reset: names this one's webhook
    format: str = "png"  # png | webp | jpeg: the storage key's extension says the same
    output_quality: int | None = None  # webp and jpeg
    character_weight: float | None = None  # with the adapter, as the row resolved them at insert time
    adapter_path: str | None = None  # in the character-adapters bucket
    adapter_sha256: str | None = None

    def __post_init__(self) -> None:
        # The row says it in text; the code speaks the enum.
        object.__setattr__(self, "previous_status", JobStatus(self.previous_status))

    @property
    def size_key(self) -> tuple[str, int, int]:
        """What the latency model learns by: quality and pixel size."""
        return (self.quality, self.width, self.height)

    def worker_input(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "prompt": self.prompt,
            "quality": self.quality,
            "aspectRatio": self.aspect_ratio,
        }
        if self.seed is not None:
            payload["seed"] = self.seed
        if self.format != "png":  # an older worker knows only PNG, and refuses unknown fields
            payload["format"] = self.format
            if self.output_quality is not None:
                payload["output_quality"] = self.output_quality
        return payload

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    @property
    def upload_path(self) -> str:
        """Where the worker uploads: a key only this job ever writes. That is its storage key,
        unless the key is a project's (``{project}/images/image_001_...``), which the project's
        later batches write again: then an upload key of its own, copied to the project's key
        once checked (so a later batch replaces the image, and a run never finds another job's)."""
        if str(self.id) in self.storage_path:
            return self.storage_path
        extension = "jpg" if self.format == "jpeg" else self.format
        return f"uploads/{self.id}.{extension}"


@dataclass(frozen=True)
class RunPodState:
    """One /status answer (or a webhook's payload)."""

    id: str
    status: RunPodStatus
    delay_ms: int | None = None
    execution_ms: int | None = None
    output: Any = None
    error: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunPodState:
        return cls(
            id=str(data.get("id", "")),
            status=RunPodStatus(str(data.get("status", ""))),
            delay_ms=data.get("delayTime"),
            execution_ms=data.get("executionTime"),
            output=data.get("output"),
            error=data.get("error"),
        )

    @property
    def finished(self) -> bool:
        return self.status.finished


@dataclass(frozen=True)
class WorkerFailure:
    """A FAILED job's error, read by the worker's error contract (see worker/errors.py)."""

    message: str
    retryable: bool

    @classmethod
    def parse(cls, error: str | None) -> WorkerFailure:
        try:
            data = json.loads(error or "")
        except json.JSONDecodeError:
            return cls(error or "the worker failed without a message", True)
        if not isinstance(data, dict):
            return cls(str(error), True)
        message = str(data.get("error_message") or data.get("error_type") or error)
        # Errors without the flag come from the SDK or the platform: bounded retries.
        return cls(message, bool(data.get("retryable", True)))


@dataclass
class RequestTally:
    """Counts the HTTP requests one logical call made (its retries included)."""

    requests: int = 0


# The fair-share identity of batches that belong to no user (made with the anon or the
# service-role key): they share one per-user cap.
NOBODY = UUID(int=0)


@dataclass(frozen=True)
class ReusableImage:
    """A succeeded job whose stored bytes an identical seeded request may copy."""

    id: UUID
    storage_path: str
    image_sha256: str
    width: int
    height: int
    steps: int


@dataclass(frozen=True)
class Success:
    """What a succeeded job records on its row."""

    job_id: UUID
    image_url: str
    image_sha256: str
    width: int
    height: int
    steps: int
    seed: int | None
    timings: dict[str, Any]
    status_polls: int
    reused_from: UUID | None = None


@dataclass(frozen=True)
class WebhookDelivery:
    """An outbox row claimed for one attempt (``attempts`` counts this one)."""

    id: int
    batch_id: UUID
    event_id: int
    url: str
    type: str
    body: dict[str, Any]
    attempts: int
