"""What the HistoryGen frontend does to the database, done the same way: as a signed-in
user, through PostgREST's role switch and JWT claims, so RLS applies."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg

from kernel.db import act_as_user


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
