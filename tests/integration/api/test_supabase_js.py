"""The frontend's view, through the official supabase-js 2.x from npm (tests/js/, pinned by its
lockfile): functions.invoke in its three answer modes and its error shapes, postgres_changes with
default settings, and Storage, against ``zimage devstack up`` and ``zimage serve``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import jwt
import psycopg
import pytest

from tests.integration.cli.test_cli_commands import environment, service
from tests.integration.devstack.running import running_devstack

JS = Path(__file__).resolve().parents[2] / "js"
pytestmark = pytest.mark.timeout(240)  # a stack, the app and node's run, in one test


def user_token(secret: str, user_id: str) -> str:
    now = int(time.time())
    claims = {"sub": user_id, "aud": "authenticated", "role": "authenticated", "iat": now, "exp": now + 600}
    return jwt.encode(claims, secret, algorithm="HS256")


def test_the_frontends_supabase_js_calls() -> None:
    node = shutil.which("node")
    assert node, "node not found: install Node.js 20 (see README)"
    assert (JS / "node_modules" / "@supabase" / "supabase-js").is_dir(), "run: npm ci --prefix tests/js"
    users = [str(uuid.uuid4()), str(uuid.uuid4())]
    with running_devstack() as (_, stack):
        with psycopg.connect(stack["DATABASE_URL"], autocommit=True) as conn:
            for user in users:
                conn.execute("insert into auth.users (id) values (%s)", (user,))
        env = environment(stack)
        with service("serve", env) as api_url:
            secret = stack["SUPABASE_JWT_SECRET"]
            result = subprocess.run(
                [node, "--experimental-websocket", "--test", "--test-reporter=spec", "frontend.test.mjs"],
                cwd=JS,
                env={
                    **os.environ,
                    **stack,
                    "API_URL": api_url,
                    "USER_A_ID": users[0],
                    "USER_A_TOKEN": user_token(secret, users[0]),
                    "USER_B_TOKEN": user_token(secret, users[1]),
                },
                capture_output=True,
                text=True,
                timeout=120,
            )
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.search(r"^\S+ pass (\d+)$", result.stdout, re.MULTILINE)  # the spec reporter's summary
    assert passed is not None, result.stdout
    assert int(passed.group(1)) == 6, result.stdout
