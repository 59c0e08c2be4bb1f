"""Reading a request body no further than a limit (a declared Content-Length past it is refused
before a byte is read): for the webhook and the HTTP functions alike."""

from __future__ import annotations

from starlette.requests import Request


async def read_body(request: Request, max_bytes: int) -> bytes | None:
    """The body, or None if it is larger than ``max_bytes``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
