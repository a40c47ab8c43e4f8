"""Shared pytest fixtures and hooks. Origin fixtures: real HTTP origins (see origins.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from pg import own_pg_cluster, pg_cluster  # noqa: F401  (a throwaway PostgreSQL, one per session)
from s3_server import moto_s3, s3  # noqa: F401  (moto's S3 server fixtures)

try:  # tests/ as a package, or tests/ on sys.path (pytest's default "prepend")
    from .origins import FaultyOrigin, NginxOrigin, write_random_file
except ImportError:
    from origins import FaultyOrigin, NginxOrigin, write_random_file


def ci() -> bool:
    """Whether this run is CI (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _fail_skip_under_ci(report):
    if ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped with CI=true, which fails the run: {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI a skip is a failure: a missing part (PostgreSQL, namespaces, containerd...)
    must break the run, not quietly shrink it. Expected failures (xfail) are left alone."""
    return _fail_skip_under_ci((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped at collection (``pytest.importorskip``...)."""
    return _fail_skip_under_ci((yield))


@pytest.fixture(scope="session", autouse=True)
def cluster_key(tmp_path_factory):
    """One cluster for the whole run: every dffs process a test starts inherits
    ``DFFS_CLUSTER_KEY``, so managers, schedulers and daemons authenticate each
    other with mutual TLS exactly as in production. Tests of the refusal and of
    ``--insecure`` clear the variable for their own processes."""
    from dffs.security.ca import create_cluster_key

    path = tmp_path_factory.mktemp("cluster") / "cluster.key"
    create_cluster_key(path, name="dffs test cluster")
    previous = os.environ.get("DFFS_CLUSTER_KEY")
    os.environ["DFFS_CLUSTER_KEY"] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("DFFS_CLUSTER_KEY", None)
        else:
            os.environ["DFFS_CLUSTER_KEY"] = previous


@pytest.fixture
def nginx_origin():
    """Factory: ``nginx_origin(root_dir, **options) -> NginxOrigin``, started.

    Options are NginxOrigin's keyword arguments (host, port, netns, limit_rate,
    extra_locations, master_process, ...). Every origin is stopped and its temp
    dir removed at teardown, and no nginx process of it may be left over.
    """
    made: list[NginxOrigin] = []

    def factory(root: str | os.PathLike, **options) -> NginxOrigin:
        origin = NginxOrigin(root, **options)
        made.append(origin)
        origin.start()
        return origin

    yield factory
    leftovers = {}
    for origin in made:
        origin.close()
        if pids := origin.processes():
            leftovers[str(origin.workdir)] = pids
    assert not leftovers, f"nginx processes left behind: {leftovers}"


@pytest.fixture
def faulty_origin():
    """A started :class:`FaultyOrigin` on 127.0.0.1; stopped (threads joined) at
    teardown, which also fails if a connection handler raised unexpectedly."""
    origin = FaultyOrigin()
    origin.start()
    try:
        yield origin
    finally:
        origin.stop()
    assert not origin.errors, origin.errors


@pytest.fixture
def make_file(tmp_path):
    """``make_file(path, size, seed=0) -> sha256 hex``: write ``size`` pseudo-random
    bytes (deterministic per seed) at ``path``; a relative path is under tmp_path."""

    def make(path: str | os.PathLike, size: int, seed: int = 0) -> str:
        path = Path(path)
        if not path.is_absolute():
            path = tmp_path / path
        return write_random_file(path, size, seed)

    return make


def _interrupt(signum, frame):
    """SIGTERM/SIGHUP end the run like Ctrl-C: the running test's ``finally`` blocks and
    fixtures tear down (processes, mounts, namespaces) instead of dying mid-test."""
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionstart(session):
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    from netns import sweep_orphaned_namespaces

    swept = sweep_orphaned_namespaces()
    if swept:
        print(f"removed {len(swept)} namespaces left by a killed earlier run: {', '.join(swept)}")
