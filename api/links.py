"""The links in the functions' answers, absolute, so that a client never builds a URL (as fal's
queue answers carry status_url and cancel_url, and Replicate's predictions their urls)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from starlette.requests import Request


def base_url(request: Request, public_url: str | None) -> str:
    """PUBLIC_URL when set (behind a proxy the request's own address is the proxy's view)."""
    return (public_url or str(request.base_url)).rstrip("/")


def batch_links(base: str, batch_id: UUID | str) -> dict[str, str]:
    query = urlencode({"batch_id": str(batch_id)})
    return {
        "status_url": f"{base}/functions/v1/batch-status?{query}",
        "events_url": f"{base}/functions/v1/batch-events?{query}",
        "cancel_url": f"{base}/functions/v1/cancel?{query}",  # POST
    }


def job_links(base: str, batch_id: UUID | str, job_id: UUID | str) -> dict[str, str]:
    """A job's status and events are its batch's; its cancel cancels it alone."""
    return {**batch_links(base, batch_id), "cancel_url": f"{base}/functions/v1/cancel?job_id={job_id}"}


def with_links(snapshot: dict[str, Any], base: str) -> dict[str, Any]:
    """A batch snapshot with its links, and each job's."""
    batch_id = snapshot["batch_id"]
    jobs = [{**job, **job_links(base, batch_id, job["job_id"])} for job in snapshot["jobs"]]
    return {**snapshot, **batch_links(base, batch_id), "jobs": jobs}
