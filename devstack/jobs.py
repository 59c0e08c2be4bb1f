"""A job's end, done through the dispatcher's own state-machine functions with no dispatcher
running: for tests and benchmarks of what follows a job (the progress stream), not of RunPod."""

from __future__ import annotations

import hashlib
from typing import Any
from uuid import UUID

import psycopg


async def finish_job(conn: psycopg.AsyncConnection[Any], job_id: UUID, error: str | None = None) -> None:
    """Take the job's lease as a dispatcher would, then succeed it with an image URL, or fail it
    permanently with ``error``. ``conn`` is in autocommit: each step commits as the dispatcher's."""
    await conn.execute(
        "update image_jobs set status = 'submitted', attempts = attempts + 1, lease_owner = 'devstack',"
        " lease_expires_at = now() + interval '1 minute' where id = %s",
        (job_id,),
    )
    if error is None:
        await conn.execute(
            "select dispatcher_succeed_job(%s, 'devstack', %s, %s, 1024, 576, 9, 7, '{}', 1)",
            (job_id, f"https://images.test/{job_id}.png", hashlib.sha256(job_id.bytes).hexdigest()),
        )
    else:
        await conn.execute("select dispatcher_fail_job(%s, 'devstack', %s, false, 1)", (job_id, error))
