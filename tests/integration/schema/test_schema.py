"""The schema against a real Postgres: migrations, the jobs trigger, wake-ups, and the pgTAP suites."""

from __future__ import annotations

import asyncio
import difflib
import json
import re
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from devstack import jobs as devstack_jobs
from devstack.postgres import PostgresCluster
from kernel.schema import SUPABASE_DIR, apply_migrations, apply_shim, migration_files

PGTAP_FILES = sorted((SUPABASE_DIR / "tests").glob("*.sql"))
USER_A = "aaaaaaaa-0000-0000-0000-000000000001"


def as_user(conn: psycopg.Connection, user_id: str) -> None:
    """Switch this transaction to the authenticated role with a JWT for user_id, as PostgREST does."""
    conn.execute("set local role authenticated")
    claims = json.dumps({"sub": user_id, "role": "authenticated"})
    conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))


def test_migration_names_follow_supabase_cli() -> None:
    names = [path.name for path in migration_files()]
    assert names, "no migrations found"
    assert all(re.fullmatch(r"\d{14}_[a-z0-9_]+\.sql", name) for name in names), names


def test_migrations_apply_in_order_on_a_fresh_database(postgres: PostgresCluster) -> None:
    with psycopg.connect(postgres.admin_dsn(), autocommit=True) as conn:
        conn.execute("drop database if exists fresh with (force)")
        conn.execute("create database fresh")
    with psycopg.connect(postgres.admin_dsn("fresh"), autocommit=True) as conn:
        apply_shim(conn)
        apply_shim(conn)  # idempotent: roles are cluster-wide
        versions = [path.name[:14] for path in migration_files()]
        assert apply_migrations(conn, role="postgres") == versions
    with psycopg.connect(postgres.dsn("fresh"), autocommit=True) as conn:
        assert apply_migrations(conn) == []  # as postgres itself, as supabase db push connects
        recorded = conn.execute(
            "select version from supabase_migrations.schema_migrations order by version"
        ).fetchall()
        assert [row[0] for row in recorded] == versions


@pytest.mark.parametrize("populated", [False, True], ids=["empty", "with-other-users-data"])
@pytest.mark.parametrize("path", PGTAP_FILES, ids=lambda path: path.name)
def test_pgtap(path: Path, populated: bool, postgres: PostgresCluster, database_url: str) -> None:
    """Each suite, on an empty database and on one that already holds other users' batches,
    jobs and events (as `supabase test db` meets a project in use)."""
    if populated:
        with psycopg.connect(database_url, autocommit=True) as conn:
            populate_with_other_users_data(conn)
    pg_prove = shutil.which("pg_prove")
    assert pg_prove, "pg_prove not found: install Debian's postgresql-15-pgtap (see README)"
    result = subprocess.run(
        [
            pg_prove,
            "--verbose",
            "--dbname",
            database_url.rsplit("/", 1)[1],
            "--host",
            "127.0.0.1",
            "--port",
            str(postgres.port),
            "--username",
            "postgres",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Result: PASS" in result.stdout


def test_batch_creates_its_jobs_atomically_and_wakes_one_listener(
    database_url: str, db: psycopg.Connection
) -> None:
    db.execute("insert into auth.users (id) values (%s)", (USER_A,))
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("listen image_jobs_queued")
        with psycopg.connect(database_url) as frontend:
            as_user(frontend, USER_A)
            # three batches in one statement: one NOTIFY, not one per row or per batch
            frontend.execute(
                "insert into image_batches (prompts) values (array['a', 'b']), (array['c']), (array['d'])"
            )
            assert db.execute("select count(*) from image_jobs").fetchone() == (0,), "visible before commit"
            assert list(listener.notifies(timeout=0.2)) == []
            frontend.commit()
        notes = list(listener.notifies(timeout=1.0, stop_after=2))
    assert [(n.channel, n.payload) for n in notes] == [("image_jobs_queued", "")]
    rows = db.execute(
        "select prompt, position, status, user_id::text from image_jobs order by prompt"
    ).fetchall()
    assert rows == [
        ("a", 0, "queued", USER_A),
        ("b", 1, "queued", USER_A),
        ("c", 0, "queued", USER_A),
        ("d", 0, "queued", USER_A),
    ]


def test_requeue_wakes_the_dispatcher_and_events_are_announced_by_id(
    database_url: str, db: psycopg.Connection
) -> None:
    batch_id = db.execute("insert into image_batches (prompts) values (array['x']) returning id").fetchone()
    assert batch_id is not None
    db.execute("update image_jobs set status = 'failed', error = 'boom', finished_at = now()")
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("listen image_jobs_queued")
        listener.execute("listen image_job_events")
        assert db.execute("select requeue_failed_jobs(batch_id => %s)", batch_id).fetchone() == (1,)
        notes = {n.channel: n.payload for n in listener.notifies(timeout=1.0, stop_after=2)}
    assert notes["image_jobs_queued"] == ""
    announced = json.loads(notes["image_job_events"])
    newest = db.execute("select max(id) from image_job_events").fetchone()
    assert announced == {"batch_id": str(batch_id[0]), "id": newest[0] if newest else None}


def test_a_refused_batch_leaves_nothing_behind(db: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match=r"prompts\[2\]: prompt is empty or blank"):
        db.execute("insert into image_batches (prompts) values (array['ok', 'fine', '   '])")
    counts = db.execute(
        "select (select count(*) from image_batches), (select count(*) from image_jobs),"
        " (select count(*) from image_job_events)"
    ).fetchone()
    assert counts == (0, 0, 0)


def test_a_nul_byte_is_refused_before_it_reaches_the_database(db: psycopg.Connection) -> None:
    with pytest.raises(psycopg.DataError, match="NUL"):
        db.execute("insert into image_batches (prompts) values (%s)", (["a\x00b"],))
    assert db.execute("select count(*) from image_batches").fetchone() == (0,)


def test_a_user_cancelling_does_not_deadlock_with_a_dispatcher_recording_a_submission(
    database_url: str, db: psycopg.Connection, postgres: PostgresCluster
) -> None:
    """The dispatcher holds the job row and then inserts an event of its batch (a foreign-key
    check on the batch row); the user's cancel holds the batch row and waits for the job row.
    With the batch locked FOR UPDATE those two waited for each other until Postgres killed one."""
    db.execute("insert into auth.users (id) values (%s)", (USER_A,))
    row = db.execute(
        "insert into image_batches (user_id, prompts) values (%s, array['x']) returning id", (USER_A,)
    ).fetchone()
    assert row is not None
    batch_id = row[0]
    db.execute("update image_jobs set status = 'submitted', lease_owner = 'd1', attempts = 1")
    job = db.execute("select id from image_jobs").fetchone()
    assert job is not None
    job_id = job[0]
    # deadlock_timeout is the superuser's to set: the dispatcher's side connects as it
    dispatcher_url = postgres.admin_dsn(database_url.rsplit("/", 1)[1])
    with psycopg.connect(dispatcher_url) as dispatcher, psycopg.connect(database_url) as frontend:
        dispatcher.execute("set deadlock_timeout = '50ms'")
        dispatcher.execute("update image_jobs set runpod_job_id = 'rp-1' where id = %s", (job_id,))
        with ThreadPoolExecutor(1) as pool:

            def cancel() -> object:
                as_user(frontend, USER_A)
                answer = frontend.execute("select cancel_image_job(%s)", (job_id,)).fetchone()
                frontend.commit()
                return answer

            cancelled = pool.submit(cancel)
            while db.execute(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
            ).fetchone() != (1,):
                time.sleep(0.01)  # the cancel now holds the batch and waits for the job row
            dispatcher.execute(
                "insert into image_job_events (batch_id, job_id, kind, payload)"
                " values (%s, %s, 'submitted', '{}')",
                (batch_id, job_id),
            )
            dispatcher.commit()
            assert cancelled.result(timeout=10) == (True,)
    kinds = db.execute("select kind from image_job_events where job_id = %s order by id", (job_id,))
    assert [kind for (kind,) in kinds] == ["submitted", "cancelled"]


def test_only_the_events_people_see_are_announced(database_url: str, db: psycopg.Connection) -> None:
    row = db.execute("insert into image_batches (prompts) values (array['x']) returning id").fetchone()
    assert row is not None
    batch_id = row[0]
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("listen image_job_events")
        db.execute(
            "insert into image_job_events (batch_id, kind, payload) values (%s, 'claimed', '{}')", (batch_id,)
        )
        assert list(listener.notifies(timeout=0.3)) == [], "bookkeeping is not announced"
        db.execute(
            "insert into image_job_events (batch_id, kind, payload) values (%s, 'progress', '{}')",
            (batch_id,),
        )
        (note,) = listener.notifies(timeout=1.0, stop_after=1)
    assert json.loads(note.payload)["batch_id"] == str(batch_id)


def populate_with_other_users_data(conn: psycopg.Connection) -> None:
    """Three other users with batches in every state, an anon-key batch, a project and events."""
    users = [str(uuid.uuid4()) for _ in range(3)]
    for user in users:
        conn.execute("insert into auth.users (id, email) values (%s, %s)", (user, f"{user}@example.test"))
        conn.execute(
            "insert into image_batches (user_id, prompts, seed, project_id, timings) values"
            " (%s, array['one', 'two', 'three'], 7, %s,"
            ' \'[{"index": 1, "startTime": 0, "endTime": 1},'
            ' {"index": 2, "startTime": 1, "endTime": 2},'
            ' {"index": 3, "startTime": 2, "endTime": 3}]\')',
            (user, f"project-{user[:8]}"),
        )
    conn.execute("insert into image_batches (prompts) values (array['from the anon key'])")
    jobs = [row[0] for row in conn.execute("select id from image_jobs order by id").fetchall()]
    for job in jobs[:4]:
        asyncio.run(_finish(conn.info.dsn, job))
    for job in jobs[4:6]:
        asyncio.run(_finish(conn.info.dsn, job, "out of memory"))
    conn.execute("update image_jobs set status = 'cancelled', finished_at = now() where id = %s", (jobs[6],))


async def _finish(dsn: str, job: uuid.UUID, error: str | None = None) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await devstack_jobs.finish_job(conn, job, error)


def test_the_migrations_produce_exactly_schema_sql(postgres: PostgresCluster) -> None:
    """supabase/schema.sql is what the migrations make; a migration without it (or it without
    a migration) fails here. To update it: make schema."""
    from devstack.schema_dump import SCHEMA_FILE, dump_schema
    from tests.conftest import TEMPLATE

    produced = dump_schema(postgres.admin_dsn(TEMPLATE))
    assert "CREATE TABLE public.image_jobs" in produced
    assert "CREATE POLICY" in produced
    written = SCHEMA_FILE.read_text()
    if produced != written:
        diff = difflib.unified_diff(
            written.splitlines(), produced.splitlines(), "supabase/schema.sql", "migrations", lineterm=""
        )
        pytest.fail("supabase/schema.sql is not current (run make schema):\n" + "\n".join(list(diff)[:60]))
