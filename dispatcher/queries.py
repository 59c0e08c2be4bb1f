"""Named SQL queries, loaded once from sql/queries.sql (``-- name: NAME`` headers)."""

from __future__ import annotations

import re
from pathlib import Path

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load(path: Path = Path(__file__).parent / "sql" / "queries.sql") -> dict[str, str]:
    parts = _HEADER.split(path.read_text())
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


QUERIES = load()
