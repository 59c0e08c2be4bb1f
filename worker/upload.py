"""Uploading the encoded image straight to Supabase Storage through a signed upload URL.

The dispatcher makes the URL for the job's key when it submits (Storage's
``/object/upload/sign``, valid two hours) and passes it in the input: the worker holds no
storage credential, only that URL, which can write that one key once. Storage answers an
error with its real status in the body's ``statusCode`` (the HTTP status is 400), so that is
what is read. 409 means an object is already at the key (an earlier run of the job, or this
run's own upload whose answer was lost): the dispatcher checks what is there and keeps the
first good image. 413 and 415 (the bucket's size or type limits) will refuse every attempt;
anything else (an expired URL, Storage down, the network) another attempt may get past, with
a fresh URL from the dispatcher.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Literal

from worker.errors import OutputRefused, UploadFailed

CONNECT_AND_READ_TIMEOUT_S = 30.0
ATTEMPTS = 3  # connection errors and 5xx only; each after a short pause
_PERMANENT = {413, 415}

Stored = Literal["uploaded", "exists"]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A signed URL is the one place the bytes may go, or come from (adapters.py downloads)."""

    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


SIGNED_URL_OPENER = urllib.request.build_opener(_NoRedirects)


def upload(url: str, data: bytes, content_type: str) -> Stored:
    """PUT ``data`` to the signed URL: "uploaded", or "exists" if an object is already there."""
    for attempt in range(1, ATTEMPTS + 1):
        request = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Type": content_type})
        try:
            with SIGNED_URL_OPENER.open(request, timeout=CONNECT_AND_READ_TIMEOUT_S) as response:
                response.read()
            return "uploaded"
        except urllib.error.HTTPError as error:
            try:
                body = error.read()
            except OSError:
                body = b""
            status, message = storage_status(body, error.code, str(error.reason))
            if (stored := refusal(status, message, len(data), content_type)) is not None:
                return stored
            if status < 500 or attempt == ATTEMPTS:
                raise UploadFailed(f"Storage answered {status}: {message}") from None
        except (urllib.error.URLError, OSError) as error:
            if attempt == ATTEMPTS:
                raise UploadFailed(f"Storage could not be reached: {type(error).__name__}") from None
        time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def storage_status(body: bytes, http_status: int, reason: str) -> tuple[int, str]:
    """The status Storage means (its body's statusCode, else the HTTP one) and its message."""
    try:
        answer = json.loads(body or b"{}")
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    try:
        status = int(answer.get("statusCode", http_status))
    except (TypeError, ValueError):
        status = http_status
    return status, str(answer.get("message") or reason)[:200]


def refusal(status: int, message: str, size: int, content_type: str) -> Stored | None:
    """What a refused upload means: "exists" (409: an object is there), OutputRefused (the
    bucket's limits: every attempt would fail), or None (another attempt may get through)."""
    if status == 409:
        return "exists"
    if status in _PERMANENT:
        raise OutputRefused(f"Storage refused the {size}-byte {content_type}: {message}")
    return None
