#!/usr/bin/env python3
"""The lazy mount against rclone's, side by side, on one nginx origin.

One object (default 1 GiB) on nginx on 127.0.0.1, read through `dffs mount`
and through `rclone mount :http: --vfs-cache-mode full --read-only` (the
competitor), with the file itself read straight from disk as the ceiling
("local file"). Each run, for each mount:

  cold sequential    `cat FILE > /dev/null` on a fresh mount whose cache is empty
                     (dffs's data dir, rclone's --cache-dir: deleted before the mount
                     starts); the origin's copy is in the page cache; the mount has
                     looked the file up (a stat, untimed: dffs sends a HEAD, rclone
                     lists the directory) but read no data
  warm sequential    the same `cat` again right after, on the same mount: both have
                     read the file once and keep it in their cache and the page cache
  warm, page cache dropped
                     the same `cat` a third time after evicting the page cache of the
                     file through the mount and of every file in the mount's cache
                     (POSIX_FADV_DONTNEED), checked with fincore: both read their
                     on-disk cache. For "local file": the file read from disk.
  sequential origin traffic
                     body bytes the origin sent during these three reads and the
                     check after them (until the mount stopped), in units of the
                     object's size: 1.00 = read once
  random 4 KiB       --random-reads preads at random 4 KiB-aligned offsets (the same
                     offsets for both in a run) on another fresh mount with an empty
                     cache: median and p99 latency of each pread; and the origin's body
                     bytes they cost, per read, counted once the origin has been quiet
                     for a second and the mount has stopped (background fetches count)

Mounts start untimed and are unmounted before the next phase's cache is emptied.
After the sequential phases the file read through each mount is compared with the
original (untimed). Prints the harness's table, ratios and one JSON line. Root.
Usage:

  .venv/bin/python scripts/bench/mount.py [--size-mib 1024] [--random-reads 200] [--runs 3] [--smoke]
"""

from __future__ import annotations

import filecmp
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parents[1] / "tests")]  # the harness; the tests' real parts
import harness  # noqa: E402
from common import DFFS, MiB, cached_bytes, drop_page_cache, make_file, timed, wait_quiet, warm_page_cache  # noqa: E402
from mounts import force_unmount, is_mounted  # noqa: E402
from origins import NginxOrigin  # noqa: E402


class Mount:
    """One FUSE mount process, up once ``ready`` shows in its directory's listing; then
    ``file`` is looked up (stat), so its metadata is known before any timed read."""

    def __init__(self, name: str, argv: list[str], mountpoint: Path, ready: Path, file: Path, log: Path):
        self.name, self.argv, self.mountpoint, self.ready, self.log_path = name, argv, mountpoint, ready, log
        self.file = file

    def __enter__(self) -> Mount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not (is_mounted(self.mountpoint) and _listed(self.ready)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} mount did not come up: {tail}")
            time.sleep(0.05)
        try:
            self.file.stat()
        except OSError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if is_mounted(self.mountpoint):
            force_unmount(self.mountpoint)


def _listed(path: Path) -> bool:
    """Whether ``path`` shows in its directory's listing (a stat too early can
    make rclone cache an error)."""
    try:
        return path.name in os.listdir(path.parent)
    except OSError:
        return False


def cat(path: Path) -> None:
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


def random_reads(path: Path, size: int, count: int, seed: int) -> list[float]:
    """Seconds of each of ``count`` 4 KiB preads at random aligned offsets."""
    rng = random.Random(seed)
    latencies = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(count):
            offset = rng.randrange(0, size // 4096) * 4096
            started = time.perf_counter()
            got = os.pread(fd, 4096, offset)
            latencies.append(time.perf_counter() - started)
            if len(got) != 4096:
                raise RuntimeError(f"short read at {offset} of {path}: {len(got)} bytes")
    finally:
        os.close(fd)
    return latencies


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--size-mib", type=int, help="object size (default 1024; --smoke: 16)")
    p.add_argument("--random-reads", type=int, help="random 4 KiB reads per run (default 200; --smoke: 20)")
    p.add_argument("--workdir", default="/var/tmp/dffs-bench-mount")
    args = harness.parse(p, size_mib=(1024, 16), random_reads=(200, 20))
    if not shutil.which("rclone"):
        sys.exit("rclone is not installed: run scripts/setup.sh (it installs Debian's rclone)")
    size = args.size_mib * MiB
    work = Path(args.workdir)
    obj = work / "www" / "object.bin"
    make_file(obj, size)
    state = Path(tempfile.mkdtemp(prefix="state.", dir=work))

    bench = harness.Bench(
        "mount",
        contenders=["dffs", "rclone", "local file"],
        figures=[
            harness.Figure("cold sequential", "GB/s"),
            harness.Figure("warm sequential", "GB/s"),
            harness.Figure("warm, page cache dropped", "GB/s"),
            harness.Figure("sequential origin traffic", "x object", lower_is_better=True),
            harness.Figure("random 4 KiB median", "ms", lower_is_better=True),
            harness.Figure("random 4 KiB p99", "ms", lower_is_better=True),
            harness.Figure("random origin traffic", "MB/read", lower_is_better=True),
        ],
        comparisons=[
            harness.Comparison("dffs", "rclone"),
            harness.Comparison("dffs", "local file", ("warm sequential", "warm, page cache dropped")),
        ],
        params={"size_bytes": size, "random_reads": args.random_reads, "workdir": str(work), "smoke": args.smoke},
        runs=args.runs,
    )
    try:
        with NginxOrigin(work / "www", workdir=work / "nginx") as origin:
            port = origin.port

            def mount(name: str) -> tuple[Mount, Path, Path]:
                """A fresh mount of ``name`` with an empty cache; the file's path; the cache dir."""
                mnt, cache = state / f"{name}-mnt", state / f"{name}-cache"
                shutil.rmtree(cache, ignore_errors=True)
                log = state / f"{name}.log"
                if name == "dffs":
                    argv = [*DFFS, "mount", str(mnt), "--data-dir", str(cache), "--upload-port", "0"]
                    argv += ["--rpc-port", "0", "--proxy-port", "-1", "--metrics-port", "0"]
                    path, ready = mnt / "http" / f"127.0.0.1:{port}" / "object.bin", mnt / "http"
                else:
                    argv = ["rclone", "mount", ":http:", str(mnt), "--http-url", f"{origin.base_url}/"]
                    argv += ["--vfs-cache-mode", "full", "--read-only", "--cache-dir", str(cache)]
                    argv += ["--config", "/dev/null"]
                    path = ready = mnt / "object.bin"
                return Mount(name, argv, mnt, ready, path, log), path, cache

            def sequential(name: str) -> dict[str, float]:
                made, path, cache = mount(name)
                warm_page_cache(obj)
                with made:
                    origin.clear_log()
                    cold = timed(lambda: cat(path))
                    warm = timed(lambda: cat(path))
                    drop_page_cache([path, cache])
                    if (left := cached_bytes([path, cache])) > size // 100:
                        raise RuntimeError(f"{left} bytes of {name}'s file and cache still in the page cache")
                    dropped = timed(lambda: cat(path))
                    if not filecmp.cmp(path, obj, shallow=False):
                        raise RuntimeError(f"{path} differs from the object")
                wait_quiet(origin)
                return {
                    "cold sequential": size / cold / 1e9,
                    "warm sequential": size / warm / 1e9,
                    "warm, page cache dropped": size / dropped / 1e9,
                    "sequential origin traffic": origin.body_bytes() / size,
                }

            def randomly(name: str, seed: int) -> dict[str, float]:
                made, path, _ = mount(name)
                with made:
                    origin.clear_log()
                    latencies = sorted(random_reads(path, size, args.random_reads, seed))
                    wait_quiet(origin, quiet=1.0)  # background fetches of the pieces read
                wait_quiet(origin)
                return {
                    "random 4 KiB median": 1000 * statistics.median(latencies),
                    "random 4 KiB p99": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
                    "random origin traffic": origin.body_bytes() / args.random_reads / 1e6,
                }

            def local() -> dict[str, float]:
                warm_page_cache(obj)
                warm = timed(lambda: cat(obj))
                drop_page_cache([obj])
                dropped = timed(lambda: cat(obj))
                warm_page_cache(obj)
                return {"warm sequential": size / warm / 1e9, "warm, page cache dropped": size / dropped / 1e9}

            for run_number, who in bench.schedule():
                if who == "local file":
                    bench.record(run_number, who, local())
                else:
                    bench.record(run_number, who, {**sequential(who), **randomly(who, seed=run_number)})
    finally:
        for name in ("dffs", "rclone"):
            if is_mounted(state / f"{name}-mnt"):
                force_unmount(state / f"{name}-mnt")
        shutil.rmtree(state, ignore_errors=True)
    bench.report()


if __name__ == "__main__":
    main()
