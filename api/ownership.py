"""Whose batch or job this is: the check cancel and retry-failed make before acting for a user."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from api.auth import Caller
from api.errors import HttpError
from api.queries import QUERIES


async def check_owner(
    conn: AsyncConnection[Any], caller: Caller, batch_id: UUID | None, job_ids: list[UUID] | None
) -> None:
    """404 for an id that does not exist, 403 for one that is someone else's (named)."""
    if batch_id is not None:
        batch = await (await conn.execute(QUERIES["batch"], {"batch_id": batch_id})).fetchone()
        if batch is None:
            raise HttpError(404, f"batch {batch_id} not found")
        if not caller.may_see(batch[1]):
            raise HttpError(403, f"batch {batch_id} is not yours")
    if job_ids is not None:
        owners = dict(await (await conn.execute(QUERIES["job_owners"], {"job_ids": job_ids})).fetchall())
        for job_id in job_ids:
            if job_id not in owners:
                raise HttpError(404, f"job {job_id} not found")
            if not caller.may_see(owners[job_id]):
                raise HttpError(403, f"job {job_id} is not yours")
