"""The ``zimage`` command line, run as a user runs it: a subprocess with an environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest

from devstack.png import png_size
from devstack.postgres import PostgresCluster
from kernel.schema import migration_files


def zimage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zimage.cli", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **(env or {})},
    )


def test_migrate_with_shim_on_a_vanilla_database(postgres: PostgresCluster) -> None:
    with psycopg.connect(postgres.admin_dsn(), autocommit=True) as conn:
        conn.execute("drop database if exists cli_migrate with (force)")
        conn.execute("create database cli_migrate")
    first = zimage("migrate", "--shim", env={"DATABASE_URL": postgres.admin_dsn("cli_migrate")})
    assert first.returncode == 0, first.stderr
    assert f"applied {len(migration_files())} migration(s)" in first.stdout
    again = zimage("migrate", env={"DATABASE_URL": postgres.dsn("cli_migrate")})
    assert again.returncode == 0, again.stderr
    assert "already up to date" in again.stdout


def test_migrate_names_a_missing_setting() -> None:
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "zimage.cli", "migrate"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
    )
    assert result.returncode == 2
    assert (
        "DATABASE_URL: Field required (Postgres connection string; on Supabase: Project Settings"
        in result.stderr
    )


@pytest.mark.parametrize("workers", ["synthetic", "real"])
def test_demo_runs_the_pipeline_end_to_end(tmp_path: Path, workers: str) -> None:
    args = ["--synthetic"] if workers == "synthetic" else []
    result = zimage("demo", *args, "--data-dir", str(tmp_path), "a Viking longship", "the Great Library")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Creating 2 image jobs..." in result.stderr  # the progress bar
    assert "2/2 images done" in result.stderr
    assert ("tiny offline Z-Image pipeline" in result.stdout) == (workers == "real")
    assert "Done: 2 of 2 images stored, 0 failed." in result.stdout
    assert "/#token=" in result.stdout  # the progress page
    stored = sorted((tmp_path / "storage" / "generated-assets" / "generated-images").glob("*.png"))
    assert len(stored) == 2
    for path in stored:
        assert str(path) in result.stdout
        assert png_size(path.read_bytes()) == (1024, 576)
    assert not _processes_under(tmp_path)  # no worker, server or Postgres left behind


def test_demo_keep_stays_up_for_the_page_and_ctrl_c_leaves_nothing_behind(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zimage.cli",
            "demo",
            "--synthetic",
            "--keep",
            "--data-dir",
            str(tmp_path),
            "a",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("Still running. Open "):
            page = line.split()[3]
            break
    else:
        raise AssertionError(f"the demo ended early: {process.wait()}")
    assert httpx.get(page.split("#")[0]).text.startswith("<!doctype html>")
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    assert "Stopped everything" in rest
    assert not _processes_under(tmp_path)


def _processes_under(directory: Path) -> list[str]:
    """Command lines of live processes that mention ``directory`` (workers, Postgres)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(directory) in text:
            found.append(text)
    return found


def test_a_stopped_cluster_leaves_no_server_behind() -> None:
    cluster = PostgresCluster().start()
    with psycopg.connect(cluster.admin_dsn(), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    cluster.stop()
    assert not cluster.root.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.admin_dsn(), connect_timeout=2).close()
