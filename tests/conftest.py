"""Shared fixtures: one real Postgres cluster per test session, a fresh database per test.

The tests are sorted by kind: tests/unit needs nothing (no Postgres, no server, no process, no
torch) and runs alone in seconds (`make unit`); tests/integration runs against real Postgres,
the stand-ins on loopback and subprocesses; tests/worker runs the real handler on the tiny
pipeline.

Also the tiny offline Z-Image pipeline, built once per session.

The cluster is started once (about a second); a template database gets the
shim and the migrations, and each test that needs a database gets its own
copy of it (CREATE DATABASE ... TEMPLATE, a few milliseconds).
"""

from __future__ import annotations

import os

# The hub is never contacted: set before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"

import itertools
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from devstack.postgres import PROJECT_USER, PostgresCluster
from kernel.schema import apply_migrations, apply_shim

TEMPLATE = "zimage_template"
_names = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    with PostgresCluster() as cluster:
        with psycopg.connect(cluster.admin_dsn(), autocommit=True) as conn:
            conn.execute(f"create database {TEMPLATE}")
        with psycopg.connect(cluster.admin_dsn(TEMPLATE), autocommit=True) as conn:
            apply_shim(conn)  # as the superuser; the migrations run as postgres, as on Supabase
            conn.execute(f"alter database {TEMPLATE} owner to {PROJECT_USER}")
            apply_migrations(conn, role=PROJECT_USER)
        yield cluster


@pytest.fixture
def database_url(postgres: PostgresCluster) -> Iterator[str]:
    """A migrated database of this test's own, dropped afterwards; its URL connects as postgres,
    which is not a superuser (as on Supabase)."""
    name = f"test_{next(_names)}"
    with psycopg.connect(postgres.admin_dsn(), autocommit=True) as conn:
        conn.execute(f"create database {name} template {TEMPLATE} owner {PROJECT_USER}")
    yield postgres.dsn(name)
    with psycopg.connect(postgres.admin_dsn(), autocommit=True) as conn:
        conn.execute(f"drop database {name} with (force)")


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny offline Z-Image pipeline, saved once per session (builds in under a second)."""
    from worker.tiny import build_tiny_pipeline  # torch: imported only by the tests that need it

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-z-image")
