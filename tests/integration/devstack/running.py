"""``zimage devstack up --synthetic`` in the background, for tests that drive the CLI against it."""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def running_devstack(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """The process and the settings it printed; stopped afterwards if still running."""
    command = [sys.executable, "-m", "zimage.cli", "devstack", "up", "--synthetic", "--workers", "2"]
    with (
        tempfile.TemporaryDirectory(prefix="zimage-test-devstack-") as data_dir,  # its PNGs, removed after
        subprocess.Popen(
            [*command, "--execution-time", "0.05", "--data-dir", data_dir, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as process,  # closes the pipes on the way out
    ):
        try:
            yield process, read_exports(process)
        finally:
            if (
                process.poll() is None
            ):  # SIGTERM: it stops its Postgres and workers (SIGKILL would orphan them)
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


def read_exports(process: subprocess.Popen[str], timeout_s: float = 60) -> dict[str, str]:
    exports: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip() == "ready":
            return exports
        name, _, value = line.removeprefix("export ").strip().partition("=")
        exports[name] = shlex.split(value)[0]
        assert time.monotonic() < deadline, "devstack did not get ready in time"
    raise AssertionError(f"devstack exited before ready: {process.wait()}")
