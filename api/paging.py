"""Keyset paging for the lists the page shows: ``?limit=`` (1 to 100) and ``?before=``, an
opaque cursor (the last row's time and id) that the previous page answered as ``next``."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any
from uuid import UUID

from starlette.requests import Request

from api.errors import HttpError
from api.openapi import errors

DEFAULT_LIMIT, MAX_LIMIT = 20, 100


def page_params(request: Request) -> dict[str, Any]:
    """The query's limit and cursor as the list queries' parameters."""
    raw_limit = request.query_params.get("limit", str(DEFAULT_LIMIT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise HttpError(400, f"limit: an integer from 1 to {MAX_LIMIT}")
    before_at, before_id = None, None
    if before := request.query_params.get("before"):
        try:
            at, _, job = base64.urlsafe_b64decode(before.encode()).decode().partition("|")
            before_at, before_id = datetime.fromisoformat(at), UUID(job)
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "before: not a cursor this server gave") from None
        if before_at.tzinfo is None:
            raise HttpError(400, "before: not a cursor this server gave")
    return {"limit": int(raw_limit), "before_at": before_at, "before_id": before_id}


def next_cursor(rows: list[dict[str, Any]], limit: int, time_key: str) -> str | None:
    """The cursor after the last row, or None when this page is the last."""
    if len(rows) < limit:
        return None
    last = rows[-1]
    return base64.urlsafe_b64encode(f"{last[time_key].isoformat()}|{last['id']}".encode()).decode()


def paged_operation(operation_id: str, summary: str, items: str) -> dict[str, Any]:
    """The OpenAPI operation of a list paged this way: ``{<items>: [...], next}``."""
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
            },
            {"name": "before", "in": "query", "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {
                "description": f"a page of {items}, and the cursor of the next one (null: the last)",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": [items, "next"],
                            "properties": {
                                items: {"type": "array", "items": {"type": "object"}},
                                "next": {"type": ["string", "null"]},
                            },
                        }
                    }
                },
            },
            **errors(400, 401, 403),
        },
    }
