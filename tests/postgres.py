"""A throwaway PostgreSQL server for tests: initdb in a temp folder, a free port, one database.

Skipped only when no PostgreSQL binaries are installed and LORAPLUS_REQUIRE_POSTGRES is unset
(CI sets it, so CI never skips). As root, the server runs as the `postgres` system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def postgres_bin() -> Path | None:
    """The folder of initdb/pg_ctl (Debian's /usr/lib/postgresql/<v>/bin, or on PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_owner(user: str | None) -> list[str]:
    """The command prefix that runs a program as `user` (nothing when we are not root)."""
    return [] if user is None else ["runuser", "-u", user, "--"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """postgresql://... of a fresh database on a server started for this test session."""
    bindir = postgres_bin()
    if bindir is None:
        if os.environ.get("LORAPLUS_REQUIRE_POSTGRES"):
            raise RuntimeError(
                "LORAPLUS_REQUIRE_POSTGRES is set but no PostgreSQL is installed: "
                "apt-get install postgresql."
            )
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with postgres_server(bindir) as url:
        yield url


@contextmanager
def postgres_server(bindir: Path) -> Iterator[str]:
    """Start a server from `bindir` on a free port; yield the URL of a new database; stop it."""
    user = None
    if os.geteuid() == 0:  # postgres refuses to run as root
        user = "postgres"
        pwd.getpwnam(user)
    root = Path(tempfile.mkdtemp(prefix="loraplus-postgres-"))  # not under pytest's 0700 tmp
    data, port = root / "data", _free_port()
    if user is not None:
        shutil.chown(root, user)
    run = [*_as_owner(user)]
    subprocess.run(
        [*run, str(bindir / "initdb"), "-D", str(data), "-U", "loraplus", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    ctl = [*run, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log")]
    subprocess.run([*ctl, "-o", options, "-w", "start"], check=True, capture_output=True)
    try:
        url = f"postgresql://loraplus@127.0.0.1:{port}/postgres"
        yield _database(url, "sweeps")
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _database(url: str, name: str) -> str:
    """Create database `name` on the server of `url`; its URL."""
    import psycopg  # the driver SQLAlchemy 2.1 uses for postgresql:// URLs

    deadline = time.monotonic() + 30
    while True:
        try:
            connection = psycopg.connect(url, autocommit=True)
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with connection:
        connection.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + f"/{name}"
