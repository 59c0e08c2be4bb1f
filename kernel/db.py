"""Connections to Supabase Postgres: the pool every process uses, and acting as a user."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool


def connection_pool(database_url: str, max_size: int = 8, check: bool = False) -> AsyncConnectionPool:
    """With ``check``, a connection is checked as it is handed out (one round trip on an idle
    connection), so that after a Postgres restart no request fails on one of the pool's dead
    connections once the database is back. The app asks for it; the dispatcher does not (its
    leases recover from a failed statement, and its hot path would pay a round trip each)."""
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs={"autocommit": True},
        reconnect_timeout=60,
        check=AsyncConnectionPool.check_connection if check else None,
    )


async def act_as_user(conn: psycopg.AsyncConnection[Any], user_id: UUID | str) -> None:
    """Make this transaction the authenticated user, as PostgREST does per request: RLS applies."""
    await conn.execute("set local role authenticated")
    claims = json.dumps({"sub": str(user_id), "role": "authenticated", "aud": "authenticated"})
    await conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
