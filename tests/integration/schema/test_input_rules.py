"""What the database accepts is what the pipeline can finish: everything the storage key and the
worker need is checked at insert (PostgREST's inserts included), keys are computed there, and a
project belongs to the first caller who used it. Property-based where a list of cases would miss
what nobody thought of."""

from __future__ import annotations

import json
import re
from typing import Any
from uuid import UUID

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from worker.errors import InvalidInput
from worker.request import parse_job
from worker.text import strip_blank

USER_A = "aaaaaaaa-0000-0000-0000-00000000000a"
USER_B = "bbbbbbbb-0000-0000-0000-00000000000b"
SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*\.(png|webp|jpg)$")
EXTENSIONS = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}
REFUSALS = (psycopg.errors.CheckViolation, psycopg.errors.InsufficientPrivilege, psycopg.errors.DataError)


@pytest.fixture
def conn(db: psycopg.Connection) -> psycopg.Connection:
    for user in (USER_A, USER_B):
        db.execute("insert into auth.users (id) values (%s)", (user,))
    return db


def insert(conn: psycopg.Connection, user: str | None, prompts: list[str], **columns: Any) -> UUID:
    """Insert a batch as PostgREST would for ``user`` (None: the service role, as the app does for
    anon-key callers), in its own transaction."""
    names = ", ".join(["prompts", *columns])
    values = [prompts, *(Jsonb(v) if k == "timings" and v is not None else v for k, v in columns.items())]
    with conn.transaction():
        if user is not None:
            conn.execute("set local role authenticated")
            claims = json.dumps({"sub": user, "role": "authenticated"})
            conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
        row = conn.execute(
            f"insert into image_batches ({names}, user_id) values ({', '.join(['%s'] * len(values))}, %s)"
            " returning id",
            [*values, user],
        ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


def jobs(conn: psycopg.Connection, batch_id: UUID) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return cursor.execute(
            "select * from image_jobs where batch_id = %s order by position", (batch_id,)
        ).fetchall()


def refusal(conn: psycopg.Connection, user: str | None, prompts: list[str], **columns: Any) -> str:
    with pytest.raises(REFUSALS) as refused:
        insert(conn, user, prompts, **columns)
    return str(refused.value.diag.message_primary)


def timed(*items: tuple[Any, Any, Any]) -> list[dict[str, Any]]:
    return [{"index": i, "startTime": s, "endTime": e} for i, s, e in items]


# ---- one definition of blank ---------------------------------------------------------------------
def test_the_database_the_http_layer_and_the_worker_agree_on_blank_for_every_character(
    conn: psycopg.Connection,
) -> None:
    characters = [chr(c) for c in range(1, 0x10000) if not 0xD800 <= c <= 0xDFFF]
    rows = conn.execute(
        "select c, strip_blank(' ' || c || ' ') from unnest(%s::text[]) as c", (characters,)
    ).fetchall()
    database_blank = {c for c, stripped in rows if stripped == ""}
    python_blank = {c for c in characters if strip_blank(f" {c} ") == ""}
    assert database_blank == python_blank
    assert {"\u00a0", "\u200b", "\u3000", "\ufeff", "\t"} <= python_blank
    assert not {"a", "\u200e", "_", "\u00ad"} & python_blank  # marks and soft hyphens are not blank
    for c in sorted(python_blank):
        with pytest.raises(InvalidInput, match="blank"):
            parse_job({"prompt": c * 3})


def test_a_prompt_of_non_breaking_spaces_is_refused_and_length_counts_after_trimming(
    conn: psycopg.Connection,
) -> None:
    assert refusal(conn, USER_A, ["\u00a0\u00a0\u200b"]) == "prompts[0]: prompt is empty or blank"
    batch = insert(conn, USER_A, ["\u00a0" * 50 + "x" * 1000 + "\u3000" * 50])
    assert jobs(conn, batch)[0]["prompt"] == "x" * 1000


# ---- timed prompts and project ids ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("timings", "message"),
    [
        (timed(("abc", 0, 1)), "timings[0].index: must be an integer from 0 to 99999, got abc"),
        (timed((None, 0, 1)), "timings[0].index: must be an integer from 0 to 99999, got null"),
        (timed((1e300, 0, 1)), "timings[0].index: must be an integer"),
        (timed((1.5, 0, 1)), "timings[0].index: must be an integer"),
        (timed((-1, 0, 1)), "timings[0].index: must be an integer"),
        (timed((1, "9" * 5000, 1)), "timings[0].startTime: must be a number of seconds"),
        (timed((1, 0, 1e300)), "timings[0].endTime: must be from 0 to 1000000 seconds"),
        (timed((1, 0.0001, 1)), "timings[0].startTime: must be from 0 to 1000000 seconds with at most 3"),
        (timed((1, 5, 4)), "timings[0].endTime: must not be before startTime"),
        ([5], "timings[0].must be an object {index, startTime, endTime}"),
        ([["index", "startTime", "endTime"]], "timings[0].must be an object"),
        ([{"index": 1, "startTime": 0, "endTime": 1, "path": "../x"}], "timings[0].path: unknown field"),
        (timed((1, 0, 1)) * 2, "timings: each index may appear once in a batch, repeated: 1"),
    ],
)
def test_timed_prompts_that_would_make_a_bad_key_are_refused_at_insert(
    conn: psycopg.Connection, timings: list[Any], message: str
) -> None:
    prompts = ["a"] * len(timings)
    assert refusal(conn, USER_A, prompts, project_id="p", timings=timings).startswith(message)
    assert conn.execute("select count(*) from image_jobs").fetchone() == (0,)


@pytest.mark.parametrize("project_id", [".", "..", "x" * 2000, " ", "~", "/", "a/b", "a b", "é", "-a", ""])
def test_project_ids_that_cleaning_would_change_are_refused(
    conn: psycopg.Connection, project_id: str
) -> None:
    message = refusal(conn, USER_A, ["a"], project_id=project_id, timings=timed((1, 0, 1)))
    assert message.startswith("project_id: 1 to 128 letters, digits")


def test_keys_are_computed_at_insert_with_the_old_functions_names(conn: psycopg.Connection) -> None:
    batch = insert(
        conn,
        USER_A,
        ["a", "b", "c"],
        project_id="Project.42_x-1",
        timings=timed((1, 0, 4.50), (2, 4.5, 9), (1000, 9.125, 12)),
    )
    assert [job["storage_path"] for job in jobs(conn, batch)] == [
        "Project.42_x-1/images/image_001_0_to_4.5.png",
        "Project.42_x-1/images/image_002_4.5_to_9.png",
        "Project.42_x-1/images/image_1000_9.125_to_12.png",
    ]
    plain = insert(conn, USER_A, ["a"])
    (job,) = jobs(conn, plain)
    assert job["storage_path"] == f"generated-images/{job['id']}.png"
    unowned = insert(conn, USER_A, ["a"], timings=timed((3, 1, 2)))
    (job,) = jobs(conn, unowned)
    assert job["storage_path"] == f"timed-images/{job['id']}/images/image_003_1_to_2.png"


# ---- project ownership ---------------------------------------------------------------------------
def test_a_project_belongs_to_its_first_user(conn: psycopg.Connection) -> None:
    insert(conn, USER_A, ["a"], project_id="rome", timings=timed((1, 0, 1)))
    message = refusal(conn, USER_B, ["b"], project_id="rome", timings=timed((1, 0, 1)))
    assert message == "project_id: the project rome belongs to another user"
    assert refusal(conn, None, ["c"], project_id="rome", timings=timed((1, 0, 1))).endswith("another user")
    insert(conn, USER_A, ["again"], project_id="rome", timings=timed((1, 0, 1)))  # the owner may
    insert(conn, None, ["anon"], project_id="anon-project", timings=timed((1, 0, 1)))
    assert refusal(conn, USER_A, ["a"], project_id="anon-project").endswith("another user")
    owners: dict[str, str | None] = dict(
        conn.execute("select project_id, owner_id::text from image_projects").fetchall()
    )
    assert owners == {"rome": USER_A, "anon-project": None}


def test_users_cannot_write_or_read_other_users_projects(conn: psycopg.Connection) -> None:
    insert(conn, USER_A, ["a"], project_id="rome", timings=timed((1, 0, 1)))
    with conn.transaction():
        conn.execute("set local role authenticated")
        claims = json.dumps({"sub": USER_B, "role": "authenticated"})
        conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
        assert conn.execute("select count(*) from image_projects").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("insert into image_projects (project_id, owner_id) values ('x', %s)", (USER_B,))


# ---- properties over direct inserts ---------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
TIMING = st.fixed_dictionaries(
    {
        "index": st.integers(-2, 100_001) | st.floats(allow_nan=False) | st.text(max_size=3) | st.none(),
        "startTime": st.integers(-1, 10)
        | st.floats(0, 10, allow_nan=False)
        | st.decimals(0, 10, places=4).map(float),
        "endTime": st.integers(-1, 20) | st.floats(0, 2e6, allow_nan=False) | st.text(max_size=3),
    }
)
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=12)
PROJECT = st.none() | st.sampled_from(["rome", "athens", ".", "..", "a/b", "x" * 129]) | TEXT
BATCH = st.fixed_dictionaries(
    {
        "user": st.sampled_from([USER_A, USER_B, None]),
        "prompts": st.lists(TEXT | st.sampled_from(["A ship", "\u00a0", " \u200b "]), min_size=1, max_size=4),
        "quality": st.sampled_from(["basic", "high", "ultra", ""]),
        "aspect_ratio": st.sampled_from(["16:9", "1:1", "9:16", "4:3"]),
        "seed": st.none() | st.integers(-1, 2**32),
        "project_id": PROJECT,
        "timings": st.none() | st.lists(TIMING | JSON, max_size=4),
        "format": st.sampled_from(["png", "webp", "jpeg", "gif", "PNG", ""]),
        "output_quality": st.none() | st.integers(-1, 101),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(BATCH, min_size=1, max_size=4))
def test_whatever_is_inserted_is_refused_with_a_reason_or_can_be_run_and_stored_under_its_owners_key(
    conn: psycopg.Connection, batches: list[dict[str, Any]]
) -> None:
    conn.execute("truncate image_batches, image_projects cascade")
    for batch in batches:
        user, columns = batch["user"], {k: v for k, v in batch.items() if k != "user"}
        batch_id = insert_or_reason(conn, user, columns)
        if isinstance(batch_id, str):
            assert batch_id, "a refusal names its reason"
            continue
        for job in jobs(conn, batch_id):
            # the worker takes it as it is: no GPU run can fail on what was accepted
            worker_input = {"prompt": job["prompt"], "quality": job["quality"]}
            worker_input["aspectRatio"] = job["aspect_ratio"]
            if job["format"] != "png":
                worker_input |= {"format": job["format"], "output_quality": job["output_quality"]}
            parse_job(worker_input)
            assert SAFE_KEY.match(job["storage_path"]), job["storage_path"]
            assert job["storage_path"].endswith(EXTENSIONS[job["format"]])
            assert ".." not in job["storage_path"].split("/")
    owners = conn.execute(
        "select storage_path, count(distinct coalesce(user_id::text, '-')) from image_jobs group by 1"
    ).fetchall()
    assert all(count == 1 for _, count in owners), "no key is shared between owners"
    bad = conn.execute(
        "select j.storage_path from image_jobs j join image_batches b on b.id = j.batch_id"
        " where b.timings is not null and b.project_id is not null"
        " and j.storage_path not like b.project_id || '/images/%'"
    ).fetchall()
    assert bad == []


def insert_or_reason(conn: psycopg.Connection, user: str | None, columns: dict[str, Any]) -> UUID | str:
    try:
        return insert(conn, user, **columns)
    except REFUSALS as refused:
        return str(refused.diag.message_primary or "")
