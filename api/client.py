"""A client of the functions, for the command line: submit a batch to generate-images and follow
its SSE stream, drawing one progress bar per batch."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any, TextIO

import httpx


class ApiError(Exception):
    """The app answered with an error (its message), or could not be reached."""


ATTEMPTS = 3


async def stream_batch(api_url: str, token: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """POST generate-images with ``stream: true`` and yield each event's data until ``complete``.

    The request carries an Idempotency-Key of its own, so when the connection fails before the
    first event (the answer lost, the batch perhaps made), it is sent again, up to ATTEMPTS
    times: the app answers the batch the first one made, never a second one."""
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"zimage-submit-{uuid.uuid4()}"}
    timeout = httpx.Timeout(30, read=None)  # a batch may take long; keep-alive comments keep it open
    for attempt in range(1, ATTEMPTS + 1):
        started = False
        try:
            async with (
                httpx.AsyncClient(base_url=api_url, timeout=timeout) as client,
                client.stream(
                    "POST", "/functions/v1/generate-images", json={**body, "stream": True}, headers=headers
                ) as response,
            ):
                if response.status_code != 200:
                    raise ApiError(_error_of(await response.aread(), response.status_code))
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        data: dict[str, Any] = json.loads(line[len("data: ") :])
                        if data["type"] == "error":
                            raise ApiError(data["error"])
                        started = True
                        yield data
                        if data["type"] == "complete":
                            return
        except httpx.TransportError as exc:
            if started or attempt == ATTEMPTS:
                raise ApiError(f"cannot reach {api_url}: {exc}") from None
            await asyncio.sleep(attempt)
            continue
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach {api_url}: {exc}") from None
        break
    raise ApiError("the stream ended before the batch completed")


def _error_of(body: bytes, status: int) -> str:
    try:
        return f"{status}: {json.loads(body)['error']}"
    except (ValueError, KeyError, TypeError):
        return f"{status}: {body[:200].decode(errors='replace')}"


class ProgressBar:
    """``[#########...........] 3/7 images done`` redrawn in place on a terminal; on anything
    else (a log, a pipe) one line per change."""

    def __init__(self, label: str, out: TextIO = sys.stderr, width: int = 30) -> None:
        self.label = label
        self.out = out
        self.width = width
        self.interactive = out.isatty()

    def update(self, done: int, total: int, message: str) -> None:
        filled = self.width * done // max(total, 1)
        line = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {message}"
        if self.interactive:
            self.out.write(f"\r\033[K{line}")
        else:
            self.out.write(f"{line}\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self.out.write(f"\r\033[K{text}\n" if self.interactive else f"{text}\n")
        self.out.flush()

    def close(self) -> None:
        if self.interactive:
            self.out.write("\n")
            self.out.flush()


async def submit(
    api_url: str,
    token: str,
    body: dict[str, Any],
    bar: ProgressBar | None,
) -> dict[str, Any]:
    """Submit and follow one batch; returns the ``complete`` event's data (with ``batch_id``)."""
    try:
        async for event in stream_batch(api_url, token, body):
            kind = event["type"]
            if kind == "progress" and bar is not None:
                bar.update(event["completed"] + event["failed"], event["total"], event["message"])
            elif kind == "image" and bar is not None:
                bar.note(f"  image {event['position'] + 1}: {event['url']}")
            elif kind in ("failed", "retrying") and bar is not None:
                bar.note(f"  image {event['position'] + 1}: {kind}: {event['error']}")
            elif kind == "complete":
                return event
    finally:
        if bar is not None:
            bar.close()
    raise ApiError("the stream ended before the batch completed")
