"""What the benchmarks share besides the harness: test files, timing, page-cache control.

The origins, namespaces, registries and process wrappers are the tests' own
(tests/origins.py, tests/netns.py, ...): a benchmark runs the same real parts
the suite checks, so every script puts tests/ on sys.path.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: dffs's command line, from the interpreter running the benchmark (the project's venv).
DFFS = [sys.executable, "-m", "dffs"]

MiB = 1 << 20


def make_file(path: Path, size: int) -> None:
    """Random bytes (incompressible, no repeated pieces); an existing file of that size is kept."""
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n


def settle() -> None:
    """Flush dirty pages so that one run's writeback does not slow the next."""
    os.sync()


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` took (after a sync, which is not timed)."""
    settle()
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command; if it fails, raise with its stderr rather than a bare exit status."""
    result = subprocess.run(list(argv), capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, argv))} exited with {result.returncode}: {result.stderr.strip()[-2000:]}"
        )
    return result


def _files(paths: Iterable[Path]) -> Iterable[Path]:
    for path in paths:
        if path.is_dir():
            yield from (p for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink())
        elif path.exists():
            yield path


def drop_page_cache(paths: Iterable[Path]) -> None:
    """Evict the page cache of these files (directories: every file below).

    POSIX_FADV_DONTNEED on just the files a phase is about, after a sync (only
    clean pages go), rather than ``echo 1 > /proc/sys/vm/drop_caches``: the
    machine is shared, and a global drop would also slow everyone else and cool
    the origin's copy, which must stay warm for both sides."""
    os.sync()
    for path in _files(paths):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_page_cache(path: Path) -> None:
    """Read a file once so the next reader gets it from memory (the origin's copy)."""
    buffer = bytearray(16 * MiB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


def cached_bytes(paths: Iterable[Path]) -> int:
    """Bytes of these files now in the page cache (util-linux ``fincore``)."""
    files = [str(p) for p in _files(paths)]
    if not files:
        return 0
    out = run(["fincore", "--bytes", "--noheadings", "--output", "RES", *files]).stdout
    return sum(int(line) for line in out.split())


def wait_quiet(origin: Any, quiet: float = 0.5, limit: float = 60.0) -> None:
    """Until the origin's access log has not grown for ``quiet`` seconds (background
    fetches show there only when they end), or ``limit`` seconds have passed."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(origin.requests())
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)


# -- what the scripts not yet on the harness still use (removed once they are) --


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OriginURL(str):
    """The origin's base URL, which also knows nginx's work dir (for its access log)."""

    def __new__(cls, url: str, workdir: Path):
        self = super().__new__(cls, url)
        self.nginx_workdir = workdir
        return self


@contextmanager
def nginx_serving(root: Path, *, workers: int = 1):
    """nginx on 127.0.0.1 serving ``root`` (sendfile on); yields the base URL."""
    work = Path(tempfile.mkdtemp(prefix="dffs-bench-nginx."))
    (work / "tmp").mkdir()
    port = free_port()
    temp_paths = " ".join(f"{k}_temp_path {work}/tmp;" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (work / "nginx.conf").write_text(
        f"daemon off; master_process on; worker_processes {workers}; user root;\n"
        f"pid {work}/nginx.pid; error_log {work}/error.log;\n"
        "events { worker_connections 256; }\n"
        f"http {{ access_log {work}/access.log; sendfile on; tcp_nopush on; keepalive_requests 100000;\n"
        f"  {temp_paths}\n"
        f"  server {{ listen 127.0.0.1:{port}; root {root}; autoindex on; }} }}\n"
    )
    proc = subprocess.Popen(["nginx", "-p", str(work), "-c", str(work / "nginx.conf")])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError((work / "error.log").read_text()) from None
                time.sleep(0.05)
        yield OriginURL(f"http://127.0.0.1:{port}", work)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def best_of(runs: int, fn, before=None) -> tuple[float, list[float]]:
    """Median seconds of ``runs`` calls of ``fn``, and all timings.

    ``before`` (untimed) runs ahead of each call, then a sync."""
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        settle()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "python": subprocess.run(["python3", "--version"], capture_output=True, text=True).stdout.strip(),
    }
