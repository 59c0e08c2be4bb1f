"""A subscription as a Server-Sent Events response.

Every event's data is one line of JSON with a ``type``; every event has an ``id``
that resumes exactly after it (Last-Event-ID). Each event is written as
``data: {...}\nid: N\n\n``: data first and ``\n`` line ends, because the existing
frontend splits the body on ``\n\n`` and reads the first line of each block
(the spec allows any field order). Once the stream has started, a
failure is an ``error`` event, never a status code: EventSource gives up for good
on a non-200 answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import structlog
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from api.broker import Subscription, data_line

log = structlog.get_logger("api.streams")


def event_stream(
    subscription: Subscription, resources: contextlib.AsyncExitStack, ping_s: float
) -> EventSourceResponse:
    """Stream ``subscription``; ``resources`` (the subscription's context) close when the stream
    ends or the client goes away, even if it left before the first byte."""
    return EventSourceResponse(
        _frames(subscription, resources),
        ping=ping_s,
        sep="\n",
        background=BackgroundTask(resources.aclose),
    )


async def _frames(subscription: Subscription, resources: contextlib.AsyncExitStack) -> AsyncIterator[bytes]:
    try:
        async for new in subscription.pending():
            yield b"".join(
                event.data_line + (b"" if token is None else b"id: " + token.encode() + b"\n") + b"\n"
                for event, token in new
            )
        if subscription.closed and not subscription.caught_up_and_finished:
            yield _error("the server is going away; reconnect")
    except Exception as exc:
        log.exception("stream.failed")
        yield _error(f"stream failed: {type(exc).__name__}")
    finally:
        await resources.aclose()


def _error(message: str) -> bytes:
    """An ``error`` event: no id, so a reconnect resumes after the last real event."""
    return data_line({"type": "error", "error": message}) + b"\n"
