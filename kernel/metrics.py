"""The /metrics route: Prometheus' text format, every metric registered in the process."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response


async def metrics(_: Request) -> Response:
    """The app's metrics and, in ``zimage serve``, the dispatcher's: one registry per process."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
