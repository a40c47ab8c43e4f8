"""Shared pieces of the benchmarks: a throwaway nginx origin and timing helpers."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


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


def make_file(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    with open(path, "wb") as f:
        chunk = os.urandom(16 << 20)
        left = size
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n


def settle() -> None:
    """Flush dirty pages so one run's writeback does not slow the next."""
    os.sync()


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
