"""Reading a function's JSON body strictly: bounded in size and depth, standard JSON only, and
only strings Postgres can store, so that no body reaches the database to fail there as a 500.

Refused with a 4xx naming the place: a body over the size limit (413), anything that is not a
JSON object, ``NaN``/``Infinity`` (not JSON, though Python reads them), nesting deeper than
MAX_DEPTH, and strings (keys too) with a NUL character or a lone surrogate (``"\\ud800"``).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from api.errors import HttpError
from kernel.bodies import read_body

MAX_DEPTH = 16  # the deepest a valid body goes is 4: {prompts: [{index: ...}]}


async def json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    body = await _read(request, max_bytes)
    try:
        value = json.loads(body, parse_constant=_not_json)
    except RecursionError:
        raise HttpError(400, f"the body is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, and _not_json's
        raise HttpError(400, "the body must be JSON (UTF-8, no NaN or Infinity)") from None
    if not isinstance(value, dict):
        raise HttpError(400, "the body must be a JSON object")
    _check_values(value)
    return value


async def _read(request: Request, max_bytes: int) -> bytes:
    body = await read_body(request, max_bytes)
    if body is None:
        raise HttpError(413, f"the body is larger than {max_bytes} bytes")
    return body


def _not_json(constant: str) -> None:
    raise ValueError(constant)


def _check_values(body: dict[str, Any]) -> None:
    """Walk the body without recursion: the depth bound and every string's contents."""
    stack: list[tuple[str, Any, int]] = [("", body, 1)]
    while stack:
        where, value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise HttpError(400, f"the body is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, str):
            _check_string(where, value)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_string(f"{where}.{key}" if where else "a key", key)
                stack.append((f"{where}.{key}" if where else key, item, depth + 1))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item, depth + 1) for i, item in enumerate(value))


def _check_string(where: str, text: str) -> None:
    if "\x00" in text:
        raise HttpError(400, f"{where}: must not contain a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise HttpError(400, f"{where}: contains a lone surrogate, which is not a character") from None
