"""What the HistoryGen frontend does to the database, done the same way: as a signed-in
user, through PostgREST's role switch and JWT claims, so RLS applies."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import psycopg


async def act_as_user(conn: psycopg.AsyncConnection[Any], user_id: str) -> None:
    """Make this transaction the authenticated user ``user_id``, as PostgREST does per request."""
    await conn.execute("set local role authenticated")
    claims = json.dumps({"sub": user_id, "role": "authenticated"})
    await conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))


async def insert_batch_as_user(database_url: str, user_id: str, prompts: list[str], **columns: Any) -> UUID:
    """``insert into image_batches (prompts, ...)`` as the authenticated user ``user_id``."""
    names = ", ".join(["prompts", *columns])
    placeholders = ", ".join(["%s"] * (1 + len(columns)))
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await act_as_user(conn, user_id)
        cursor = await conn.execute(
            f"insert into image_batches ({names}) values ({placeholders}) returning id",
            [prompts, *columns.values()],
        )
        row = await cursor.fetchone()
    assert row is not None
    return UUID(str(row[0]))
