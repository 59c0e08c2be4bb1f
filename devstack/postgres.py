"""A throwaway PostgreSQL cluster started from the machine's server binaries.

Used by the test suite and by the local stack. The cluster lives in a private
temporary directory, listens on a free loopback port, is tuned for speed over
durability (fsync off), and is removed when stopped.

Deliberately unusual: Postgres refuses to run as root, so when the current
user is root the server runs as the unprivileged ``postgres`` system user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# As on Supabase: the cluster's superuser is supabase_admin, and postgres, the role the
# migrations and every service connect as, is not a superuser (the shim creates it).
SUPERUSER = "supabase_admin"
PROJECT_USER = "postgres"
SERVER_OS_USER = "postgres"  # Postgres refuses to run as root: Debian's postgres account runs it
_SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # logical so the Realtime stand-in can decode changes like Supabase does
    "wal_level": "logical",
    # the Realtime stand-in stamps each change with its commit's time, as Realtime does
    "track_commit_timestamp": "on",
    "max_connections": "300",
    "shared_buffers": "128MB",
}


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries were found on this machine."""


def find_bindir() -> Path:
    """Locate initdb/pg_ctl: ``$PG_BINDIR``, ``pg_config --bindir``, Debian's layout, then PATH."""
    candidates: list[str] = []
    if env := os.environ.get("PG_BINDIR"):
        candidates.append(env)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    raise PostgresNotFound(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql-15 "
        "or set PG_BINDIR to the directory that holds them"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> str | None:
    """The user to run the server as: ``postgres`` when we are root, else ourselves."""
    return SERVER_OS_USER if os.geteuid() == 0 else None


@dataclass
class PostgresCluster:
    """One initdb'd cluster; use as a context manager or call start()/stop()."""

    port: int = 0
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="zimage-pg-")))
    _bindir: Path = field(default_factory=find_bindir)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def dsn(self, dbname: str = "postgres", user: str = PROJECT_USER) -> str:
        """A connection as the project's owner role (not a superuser; it exists once the shim
        has been applied), as a Supabase DATABASE_URL connects."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def admin_dsn(self, dbname: str = "postgres") -> str:
        """A connection as the cluster's superuser: for the shim and for creating databases."""
        return self.dsn(dbname, SUPERUSER)

    def start(self) -> PostgresCluster:
        user = _server_user()
        if user is not None:
            info = pwd.getpwnam(user)
            os.chmod(self.root, 0o755)
            os.chown(self.root, info.pw_uid, info.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C.UTF-8",
        )
        options = " ".join(f"-c {key}={value}" for key, value in _SERVER_SETTINGS.items())
        for _ in range(5):  # the free port can be taken between probe and bind
            self.port = self.port or free_port()
            options_here = (
                f"{options} -c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories={self.root}"
            )
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.datadir),
                    "-o",
                    options_here,
                    "-l",
                    str(self.root / "server.log"),
                    "-w",
                    "-t",
                    "30",
                    "start",
                )
                return self
            except subprocess.CalledProcessError:
                self.port = 0
        raise RuntimeError(f"postgres did not start; see {self.root / 'server.log'}")

    def stop(self) -> None:
        if self.datadir.exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        """Restart in place (same port and data), for tests of reconnection."""
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-m",
            "fast",
            "-l",
            str(self.root / "server.log"),
            "-w",
            "restart",
        )

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [str(self._bindir / tool), *args],
            check=True,
            capture_output=True,
            user=_server_user(),
            cwd=self.root,
        )

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
