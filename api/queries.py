"""The HTTP functions' named SQL queries (api/sql/queries.sql)."""

from __future__ import annotations

from pathlib import Path

from kernel.queries import load_queries

QUERIES = load_queries(Path(__file__).parent / "sql" / "queries.sql")
