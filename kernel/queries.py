"""Named SQL: a ``.sql`` file of queries, each under a ``-- name: NAME`` header, loaded once.

The SQL lives in files where it reads as SQL (with its reasoning in comments), not in strings.
"""

from __future__ import annotations

import re
from pathlib import Path

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load_queries(path: Path) -> dict[str, str]:
    parts = _HEADER.split(path.read_text())
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
