"""Applying the Supabase migrations (and, locally, the environment shim) to a database.

Applied versions are recorded in ``supabase_migrations.schema_migrations``, the
table the Supabase CLI keeps, so ``zimage migrate`` and ``supabase db push``
agree on what has already run.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

SUPABASE_DIR = Path(__file__).resolve().parent.parent / "supabase"
SHIM = SUPABASE_DIR / "local" / "shim.sql"

_HISTORY = """
create schema if not exists supabase_migrations;
create table if not exists supabase_migrations.schema_migrations (
  version text primary key, statements text[], name text
)
"""


def migration_files(directory: Path = SUPABASE_DIR / "migrations") -> list[Path]:
    """Migrations in the order the Supabase CLI applies them (by timestamp prefix)."""
    return sorted(directory.glob("[0-9]*_*.sql"))


def apply_shim(conn: psycopg.Connection) -> None:
    """Give a vanilla Postgres the roles and schemas Supabase provides. Never on Supabase."""
    with conn.transaction():
        conn.execute(SHIM.read_text())


def apply_migrations(conn: psycopg.Connection, role: str | None = None) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction; return their versions.
    With ``role`` (a local cluster's superuser connection, after the shim), they run as that role,
    as ``supabase db push`` runs them as postgres: what they create is postgres's, and Supabase's
    default privileges apply to it."""
    if role is not None:
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(role)))
    try:
        return _apply_pending(conn)
    finally:
        if role is not None:
            conn.execute("reset role")


def _apply_pending(conn: psycopg.Connection) -> list[str]:
    with conn.transaction():
        conn.execute(_HISTORY)
        done = {row[0] for row in conn.execute("select version from supabase_migrations.schema_migrations")}
    applied = []
    for path in migration_files():
        version, _, name = path.stem.partition("_")
        if version in done:
            continue
        with conn.transaction():
            conn.execute(path.read_text())
            conn.execute(
                "insert into supabase_migrations.schema_migrations (version, name) values (%s, %s)",
                (version, name),
            )
        applied.append(version)
    return applied
