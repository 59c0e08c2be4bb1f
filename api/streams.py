"""A subscription as a Server-Sent Events response.

Every event's data is one line of JSON with a ``type``; every event has an ``id``
that resumes exactly after it (Last-Event-ID). Once the stream has started, a
failure is an ``error`` event, never a status code: EventSource gives up for good
on a non-200 answer.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import structlog
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from api.broker import Subscription

log = structlog.get_logger("api.streams")


def event_stream(
    subscription: Subscription, resources: contextlib.AsyncExitStack, ping_s: float
) -> EventSourceResponse:
    """Stream ``subscription``; ``resources`` (the subscription's context) close when the stream
    ends or the client goes away, even if it left before the first byte."""
    return EventSourceResponse(
        _frames(subscription, resources),
        ping=ping_s,
        background=BackgroundTask(resources.aclose),
    )


async def _frames(
    subscription: Subscription, resources: contextlib.AsyncExitStack
) -> AsyncIterator[dict[str, Any]]:
    try:
        async for event in subscription.events():
            yield {"id": subscription.cursor_token(), "data": _line(event.data())}
        if subscription.closed and not subscription.caught_up_and_finished:
            yield {"data": _line({"type": "error", "error": "the server is shutting down; reconnect"})}
    except Exception as exc:
        log.exception("stream.failed")
        yield {"data": _line({"type": "error", "error": f"stream failed: {type(exc).__name__}"})}
    finally:
        await resources.aclose()


def _line(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)
