"""A throwaway PostgreSQL cluster for tests (PostgreSQL 15 from Debian).

``PgCluster`` runs ``initdb`` + ``pg_ctl`` as the ``postgres`` user (initdb
refuses root) in a temp dir owned by it, listening on 127.0.0.1 and a Unix
socket in that dir, trust authentication.  ``new_database()`` hands out a fresh
database per test; ``stop()``/``start()`` simulate the database going away;
``close()`` always stops the server and removes the dir.

Skips when PostgreSQL is not installed (run scripts/setup.sh); with ``CI=true`` the
conftest hook turns that skip into a failure.
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
from pathlib import Path

import pytest


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    def __init__(self) -> None:
        bindir = pg_bindir()
        if bindir is None:
            pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
        try:
            self.user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("no postgres user")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="dffs-pg-"))
        os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.data = self.dir / "data"
        self.port = _free_port()
        self._databases = 0
        self.running = False

    def _as_postgres(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run([*prefix, *cmd], cwd=self.dir, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
        return result

    def init(self) -> PgCluster:
        self._as_postgres(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        return self.start()

    def start(self) -> PgCluster:
        options = f"-k {self.dir} -h 127.0.0.1 -p {self.port} -c fsync=off -c full_page_writes=off"
        self._as_postgres(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "start"
        )
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.running = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        self._databases += 1
        name = f"dffs_test_{self._databases}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        try:
            if self.data.exists():
                try:
                    self.stop() if self.running else None
                except Exception:
                    pass
                if (self.data / "postmaster.pid").exists():
                    subprocess.run(
                        [
                            "runuser",
                            "-u",
                            "postgres",
                            "--",
                            str(self.bindir / "pg_ctl"),
                            "-D",
                            str(self.data),
                            "-m",
                            "immediate",
                            "stop",
                        ],
                        capture_output=True,
                        timeout=30,
                    )
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"):
    """Polls ``predicate`` until it returns a truthy value (which is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def pg_cluster():
    """One PostgreSQL server for the session; tests get their own databases."""
    cluster = PgCluster()
    try:
        cluster.init()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def own_pg_cluster():
    """A PostgreSQL server for one test (which may stop and start it)."""
    cluster = PgCluster()
    try:
        cluster.init()
        yield cluster
    finally:
        cluster.close()
