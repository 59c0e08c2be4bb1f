"""Every ``zimage`` subcommand against the local stack, run as an operator runs it: a process
with the environment ``zimage devstack up`` prints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

import httpx
import psycopg
import pytest

from devstack.postgres import free_port
from tests.integration.devstack.running import running_devstack

PROMPTS = ["The Rosetta Stone", "The Colosseum at dusk"]
SECRETS = ["SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_ANON_KEY", "SUPABASE_JWT_SECRET", "RUNPOD_API_KEY"]


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, str]]:
    """The settings ``zimage devstack up`` prints (its stand-ins run in their own process)."""
    with running_devstack() as (_, exports):
        yield exports


def environment(stack: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **stack, "SWEEP_INTERVAL_SECONDS": "0.5"}


def zimage(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zimage.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@contextmanager
def service(command: str, env: dict[str, str]) -> Iterator[str]:
    """``zimage <command> --port P`` until it answers /healthz; SIGTERM afterwards must end it cleanly."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "zimage.cli", command, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, f"zimage {command} did not become healthy"
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert "Traceback" not in output, output
        for secret in SECRETS:  # logs never carry a key or a token
            assert env[secret] not in output, f"{secret} reached the log of zimage {command}"


def test_serve_then_submit_status_and_retry(stack: dict[str, str]) -> None:
    env = environment(stack)
    with service("serve", env) as url:
        assert httpx.get(f"{url}/healthz").json()["dispatcher"]["wakeup"] == {"postgres": True}
        client_env = {**env, "ZIMAGE_API_URL": url}
        submitted = zimage("submit", "--json", "--aspect-ratio", "1:1", *PROMPTS, env=client_env)
        assert submitted.returncode == 0, submitted.stderr
        result = json.loads(submitted.stdout)
        assert result["success"] is True
        assert result["total"] == 2
        assert len(result["images"]) == 2

        batch = zimage("status", result["batch_id"], env=env)
        assert batch.returncode == 0, batch.stderr
        assert f"batch {result['batch_id']} (2 images: succeeded 2)" in batch.stdout

        job_id = _fail_one_job(stack["DATABASE_URL"], UUID(result["batch_id"]))
        queue = json.loads(zimage("status", "--json", env=env).stdout)
        assert queue["jobs_by_state"] == {"failed": 1, "succeeded": 1}
        retried = zimage("retry", "--job", str(job_id), "--since", "1h", env=env)
        assert retried.stdout.strip() == "requeued 1 failed job(s)"
        _wait_for(
            lambda: (
                json.loads(zimage("status", "--json", env=env).stdout)["jobs_by_state"] == {"succeeded": 2}
            )
        )

        # EventSource's way in: the token in the query string (never logged, checked on the way out).
        events = httpx.get(
            f"{url}/functions/v1/batch-events",
            params={"batch_id": result["batch_id"], "access_token": env["SUPABASE_SERVICE_ROLE_KEY"]},
        )
        assert events.status_code == 200
        assert '"type":"complete"' in events.text

        human = zimage("submit", *PROMPTS[:1], env=client_env)
        assert human.returncode == 0, human.stderr
        assert "1/1 images done" in human.stderr
        assert "1 of 1 stored" in human.stdout


def test_http_and_dispatch_run_apart(stack: dict[str, str]) -> None:
    env = environment(stack)
    with service("dispatch", env), service("http", env) as url:
        assert "dispatcher" not in httpx.get(f"{url}/healthz").json()
        submitted = zimage("submit", "--json", *PROMPTS, env={**env, "ZIMAGE_API_URL": url})
        assert submitted.returncode == 0, submitted.stderr
        assert json.loads(submitted.stdout)["failed"] == 0


def test_exit_codes_say_what_went_wrong(stack: dict[str, str], tmp_path: Path) -> None:
    env = environment(stack)
    assert zimage("submit", env=env).returncode == 2
    unreachable = zimage(
        "submit", "a prompt", env={**env, "ZIMAGE_API_URL": f"http://127.0.0.1:{free_port()}"}
    )
    assert unreachable.returncode == 3
    assert "cannot reach" in unreachable.stderr
    missing = zimage("status", "00000000-0000-4000-8000-00000000dead", env=env)
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    assert zimage("retry", env=env).returncode == 2
    with service("http", env) as url:
        refused = zimage("submit", "a prompt", env={**env, "ZIMAGE_API_URL": url, "ZIMAGE_TOKEN": "forged"})
    assert refused.returncode == 3
    assert "401: malformed access token" in refused.stderr


def test_every_subcommand_has_complete_help() -> None:
    commands = [
        "migrate",
        "dispatch",
        "serve",
        "http",
        "demo",
        "submit",
        "status",
        "retry",
        "devstack",
        "characters",
    ]
    for command in commands:
        result = zimage(command, "--help", env=dict(os.environ))
        assert result.returncode == 0
        assert "usage: zimage" in result.stdout


def _fail_one_job(database_url: str, batch_id: UUID) -> UUID:
    """Mark one finished job failed through the dispatcher's own state machine (as a retry-worthy
    permanent failure would leave it)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "update image_jobs set status = 'running', lease_owner = 'test'"
            " where batch_id = %s and position = 0 returning id",
            (batch_id,),
        ).fetchone()
        assert row is not None
        conn.execute("select dispatcher_fail_job(%s, 'test', 'worker lost', false, 0)", (row[0],))
    return UUID(str(row[0]))


def _wait_for(condition: object, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_cancel_a_batch_from_the_command_line(stack: dict[str, str]) -> None:
    env = environment(stack)
    assert zimage("cancel", env=env).returncode == 2
    with psycopg.connect(stack["DATABASE_URL"], autocommit=True) as conn:
        row = conn.execute(
            "insert into image_batches (user_id, prompts) values (%s, %s) returning id",
            ("00000000-0000-4000-8000-000000000001", ["Agincourt", "Crecy"]),  # supabase/seed.sql's user
        ).fetchone()
        assert row is not None
        cancelled = zimage("cancel", "--batch", str(row[0]), env=env)
        assert cancelled.stdout.strip() == "cancelled 2 job(s)", cancelled.stderr
        states = conn.execute("select status from image_jobs where batch_id = %s", (row[0],)).fetchall()
    assert [state for (state,) in states] == ["cancelled", "cancelled"]


def test_characters_add_list_and_remove(stack: dict[str, str], tmp_path: Path) -> None:
    from worker.tiny import build_tiny_adapter, build_tiny_pipeline

    env = environment(stack)
    adapter = build_tiny_adapter(
        build_tiny_pipeline(tmp_path / "tiny"), tmp_path / "napoleon.safetensors", seed=1
    )
    not_an_adapter = tmp_path / "notes.safetensors"
    not_an_adapter.write_text("a text file")
    owner = "demo@historygen.local"  # supabase/seed.sql's user, by email
    refused = zimage(
        "characters", "add", "Napoleon", "--lora", str(not_an_adapter), "--owner", owner, env=env
    )
    assert (refused.returncode, "not a safetensors file" in refused.stderr) == (2, True), refused.stderr
    unknown = zimage(
        "characters", "add", "Napoleon", "--lora", str(adapter), "--owner", "nobody@x.test", env=env
    )
    assert (unknown.returncode, "no such user" in unknown.stderr) == (2, True), unknown.stderr

    added = zimage(
        "characters",
        "add",
        "Napoleon",
        "--lora",
        str(adapter),
        "--owner",
        owner,
        "--trigger",
        "napoleon_zit",
        "--weight",
        "0.8",
        "--json",
        env=env,
    )
    assert added.returncode == 0, added.stderr
    row = json.loads(added.stdout)
    again = zimage("characters", "add", "Napoleon", "--lora", str(adapter), "--owner", owner, env=env)
    assert (again.returncode, "already has a character named" in again.stderr) == (2, True), again.stderr
    listed = json.loads(zimage("characters", "list", "--json", env=env).stdout)
    assert [(c["name"], c["trigger_phrase"], c["owner"]) for c in listed] == [
        ("Napoleon", "napoleon_zit", owner)
    ]
    with psycopg.connect(stack["DATABASE_URL"]) as conn:
        (path,) = (
            conn.execute("select adapter_path from characters where id = %s", (row["id"],)).fetchone() or ()
        )
    key = stack["SUPABASE_SERVICE_ROLE_KEY"]
    object_url = f"{stack['SUPABASE_URL']}/storage/v1/object/character-adapters/{path}"
    headers = {"Authorization": f"Bearer {key}", "apikey": key}
    assert httpx.get(object_url, headers=headers).content == adapter.read_bytes()

    removed = zimage("characters", "remove", row["id"], env=env)
    assert removed.stdout.strip() == f"removed Napoleon ({row['id']})", removed.stderr
    assert json.loads(zimage("characters", "list", "--json", env=env).stdout) == []
    assert httpx.get(object_url, headers=headers).status_code != 200, "the file went with it"
    assert zimage("characters", "remove", row["id"], env=env).returncode == 1
