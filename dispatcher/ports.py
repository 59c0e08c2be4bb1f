"""The dispatcher core's ports: what it needs from the world, as typing.Protocols.

The core (claiming.py, runner.py) depends on these and on domain.py only; the adapters
(store.py on psycopg, runpod.py and storage.py on httpx, wakeup.py and kernel.listen) implement
them and translate their drivers' errors into the domain's error tree at the boundary, so no
driver exception reaches the core. Tests can hand the core any object of these shapes.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol
from uuid import UUID

from dispatcher.domain import ClaimedJob, JobStatus, RequestTally, ReusableImage, RunPodState, Success


class JobStore(Protocol):
    """image_jobs: every method changes a row only while this dispatcher holds its lease, and
    says whether it did. Any failure of the store itself raises StoreUnavailable."""

    async def claim(self, limit: int, per_user: int) -> list[ClaimedJob]: ...

    async def publish_capacity(self, workers: int, in_flight: int) -> int: ...

    async def record_progress(self, job_id: UUID, progress: dict[str, int]) -> None: ...

    async def forget_capacity(self) -> None: ...

    async def mark_submitted(self, job_id: UUID, runpod_job_id: str, endpoint_id: str) -> bool: ...

    async def mark_running(self, job_id: UUID, queue_s: float | None = None) -> bool: ...

    async def defer(self, job_id: UUID, reason: str, delay_s: float) -> bool: ...

    async def resubmit(self, job_id: UUID, reason: str) -> tuple[int, int] | None: ...

    async def succeed(self, success: Success) -> bool: ...

    async def fail(
        self,
        job: ClaimedJob,
        error: str,
        *,
        retryable: bool,
        status_polls: int,
        backoff_base_s: float,
        backoff_max_s: float,
    ) -> JobStatus | None: ...

    async def renew_leases(self, job_ids: list[UUID]) -> set[UUID]: ...

    async def release_leases(self, job_ids: list[UUID]) -> set[UUID]: ...

    async def find_reusable(self, job: ClaimedJob) -> ReusableImage | None: ...

    async def announce_completion(self, job_id: UUID) -> None: ...


class GpuEndpoint(Protocol):
    """RunPod's serverless API; errors are the domain's RunPodError family."""

    async def submit(self, endpoint_id: str, payload: dict[str, Any]) -> str: ...

    async def status(
        self, endpoint_id: str, job_id: str, tally: RequestTally | None = None
    ) -> RunPodState: ...

    async def health(self, endpoint_id: str) -> dict[str, Any]: ...

    async def cancel(self, endpoint_id: str, job_id: str) -> None: ...


class ObjectStorage(Protocol):
    """The bucket the images go to; errors are StorageError and StorageRejected."""

    async def upload(self, path: str, data: bytes, content_type: str) -> str: ...

    async def signed_upload_url(self, path: str) -> str | None: ...

    async def download(self, path: str) -> bytes: ...

    async def signed_download_url(self, path: str, expires_in_s: int) -> str: ...

    async def remove(self, path: str) -> None: ...

    def public_url(self, path: str) -> str: ...


class WakeupSource(Protocol):
    """Something that wakes the claim loop (LISTEN, Realtime) and says when it is connected."""

    connected: asyncio.Event

    async def run(self) -> None: ...
