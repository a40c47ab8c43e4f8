"""What the benchmarks share besides the harness: test files, timing, page-cache control.

The origins, namespaces, registries and process wrappers are the tests' own
(tests/origins.py, tests/netns.py, ...): a benchmark runs the same real parts
the suite checks, so every script puts tests/ on sys.path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
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


def pages_per_folio(path: Path, length: int = 16 * MiB) -> float:
    """Mean size, in pages, of the page-cache folios holding the first ``length`` bytes of
    ``path``, which should be cached (its pages are mapped privately and never written, so the
    mapping points at the cache's own pages; /proc/self/pagemap gives their frames and
    /proc/kpageflags their folio bits; root). The kernel copies a read out of the page cache
    folio by folio: a file kept in 4 KiB folios reads slower than one in 2 MiB folios."""
    import ctypes
    import mmap
    import struct

    page = os.sysconf("SC_PAGE_SIZE")
    with open(path, "rb") as f:
        length = min(length, os.fstat(f.fileno()).st_size) // page * page
        if length == 0:
            return 0.0
        view = mmap.mmap(f.fileno(), length, access=mmap.ACCESS_COPY)
    try:
        for offset in range(0, length, page):  # fault every page in (from the cache)
            view[offset]
        anchor = ctypes.c_char.from_buffer(view)
        first = ctypes.addressof(anchor) // page
        del anchor  # releases the buffer so that the mapping can close
        heads = singles = 0
        with open("/proc/self/pagemap", "rb") as pagemap, open("/proc/kpageflags", "rb") as flags:
            for index in range(length // page):
                pagemap.seek((first + index) * 8)
                entry = struct.unpack("Q", pagemap.read(8))[0]
                if not entry >> 63:  # not present
                    continue
                flags.seek((entry & ((1 << 55) - 1)) * 8)
                bits = struct.unpack("Q", flags.read(8))[0]
                if bits & (1 << 15):  # KPF_COMPOUND_HEAD: the first page of a large folio
                    heads += 1
                elif not bits & (1 << 16):  # nor KPF_COMPOUND_TAIL: a folio of one page
                    singles += 1
    finally:
        view.close()
    return length / page / max(1, heads + singles)


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


def without_debug_logs(proc: Any) -> Any:
    """A tests' ``cluster.Process`` (scheduler, daemon) as a user runs it: no ``--debug``, no ``-v``.

    The tests want every event in the log; a benchmark must not make the dffs side
    format and write debug lines its competitor never pays for."""
    proc.argv = [a for a in proc.argv if a not in ("--debug", "-v", "--verbose")]
    return proc


def use_cluster_key(work: Path) -> Path:
    """The cluster key every dffs process started from here inherits (``DFFS_CLUSTER_KEY``):
    the one already named there (the test suite's), else one made with ``dffs cluster init``
    in ``work``. Members on namespace hosts are not on loopback, so without a key they refuse
    to start; ``--insecure`` would measure a transport users are told not to run."""
    if named := os.environ.get("DFFS_CLUSTER_KEY"):
        return Path(named)
    key = work / "cluster.key"
    if not key.exists():
        run([*DFFS, "cluster", "init", str(key)])
    os.environ["DFFS_CLUSTER_KEY"] = str(key)
    return key


def start_dffs_cluster(
    stack: ExitStack,
    net: Any,
    work: Path,
    sched_host: Any,
    seed_host: Any,
    hosts: Sequence[Any],
    extra: Callable[[Any], Sequence[str]] = lambda host: (),
    *,
    insecure: bool = False,
) -> None:
    """A fresh scheduler, a seed and a daemon per host, all with empty data dirs, each on
    its namespace host; ``stack`` stops them in reverse order (and ``net`` kills them at
    the latest). ``extra(host)`` adds flags to a daemon. Members authenticate each other
    as in production (:func:`use_cluster_key`), or, with ``insecure``, every member runs
    with ``--insecure`` (plain text, unsigned pieces: what security is measured against)."""
    from cluster import Daemon, Process

    use_cluster_key(work)
    plain = ("--insecure",) if insecure else ()
    sched = without_debug_logs(
        Process(
            ["scheduler", "--listen", f"{sched_host.ip}:8002", *plain],
            work / "scheduler.log",
            r"listening on",
            prefix=sched_host.command([]),
        )
    )
    stack.callback(sched.stop)
    sched.start()
    net.processes.append(sched.proc)
    for host in [seed_host, *hosts]:
        daemon = without_debug_logs(
            Daemon(
                work,
                host.name,
                f"{sched_host.ip}:8002",
                ip=host.ip,
                seed=host is seed_host,
                prefix=host.command([]),
                extra=(*plain, *extra(host)),
            )
        )
        shutil.rmtree(daemon.data_dir, ignore_errors=True)
        stack.callback(daemon.stop)
        daemon.start()
        net.processes.append(daemon.proc)


# -- for scripts not on the harness yet (layers.py) ----------------------------


@contextmanager
def nginx_serving(root: Path) -> Iterator[str]:
    """nginx (the tests' NginxOrigin) serving ``root`` on loopback; yields its base URL."""
    from origins import NginxOrigin

    with NginxOrigin(root) as origin:
        yield origin.base_url


def machine() -> dict[str, Any]:
    """The machine's description, as the harness's JSON line gives it."""
    import harness

    return harness.machine()
