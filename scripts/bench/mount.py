#!/usr/bin/env python3
"""The lazy mount against rclone's, side by side, on one nginx origin.

For one object (default 1 GiB) served by nginx on loopback, each contender
gets a fresh mount and an empty cache, then:

  cold sequential   cat FILE > /dev/null through the mount (first read: from the origin)
  warm sequential   the same again (served from the mount's cache)
  random 4 KiB      N reads at random 4 KiB-aligned offsets on a fresh mount:
                    median and p99 latency, and the origin bytes they cost

Local disk (the file read straight from where nginx serves it) is the ceiling.
Prints a table, ratios dffs/rclone, and one JSON line. Usage:

  .venv/bin/python scripts/bench/mount.py [--size-mib 1024] [--random-reads 200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_file, nginx_serving  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def is_mounted(path: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


class Mount:
    def __init__(self, name: str, argv: list[str], mountpoint: Path, ready: Path):
        self.name, self.argv, self.mountpoint, self.ready = name, argv, mountpoint, ready

    def __enter__(self):
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not (is_mounted(self.mountpoint) and _exists(self.ready)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                self.log.seek(0)
                raise RuntimeError(f"{self.name} mount did not come up: {self.log.read().decode()[-2000:]}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.log.close() if self.proc.poll() is not None else None
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)


def _exists(path: Path) -> bool:
    """Whether ``path`` shows in its directory's listing (a stat too early can
    make rclone cache an error)."""
    try:
        return path.name in os.listdir(path.parent)
    except OSError:
        return False


def origin_bytes(log: Path, start: int) -> int:
    """Body bytes nginx logged after byte offset ``start`` of its access log."""
    total = 0
    with open(log) as f:
        f.seek(start)
        for line in f:
            fields = line.split('"')
            if len(fields) > 2:
                parts = fields[2].split()
                if len(parts) >= 2 and parts[1].isdigit():
                    total += int(parts[1])
    return total


def timed_cat(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def random_reads(path: Path, size: int, count: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    latencies = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(count):
            offset = rng.randrange(0, size // 4096) * 4096
            started = time.perf_counter()
            os.pread(fd, 4096, offset)
            latencies.append(time.perf_counter() - started)
    finally:
        os.close(fd)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--random-reads", type=int, default=200)
    parser.add_argument("--workdir", default="/var/tmp/dffs-bench-mount")
    args = parser.parse_args()
    if not shutil.which("rclone"):
        sys.exit("rclone is not installed: run scripts/setup.sh (it installs Debian's rclone)")
    size = args.size_mib << 20
    work = Path(args.workdir)
    (work / "www").mkdir(parents=True, exist_ok=True)
    make_file(work / "www" / "object.bin", size)
    results: dict[str, dict] = {}

    with nginx_serving(work / "www") as base:
        port = base.rsplit(":", 1)[1]
        log = Path(base.nginx_workdir) / "access.log"
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"{base}/object.bin"], check=True)  # origin page cache

        def contenders():
            state = Path(tempfile.mkdtemp(prefix="dffs-bench-mount."))
            dffs_mnt, rclone_mnt = state / "dffs", state / "rclone"
            yield (
                "dffs",
                lambda: Mount(
                    "dffs",
                    [str(REPO / ".venv/bin/dffs"), "mount", str(dffs_mnt), "--data-dir", str(state / "dffs-data")],
                    dffs_mnt,
                    dffs_mnt / "http",
                ),
                dffs_mnt / "http" / f"127.0.0.1:{port}" / "object.bin",
                state,
            )
            yield (
                "rclone",
                lambda: Mount(
                    "rclone",
                    [
                        "rclone",
                        "mount",
                        ":http:",
                        str(rclone_mnt),
                        "--http-url",
                        f"{base}/",
                        "--vfs-cache-mode",
                        "full",
                        "--read-only",
                        "--cache-dir",
                        str(state / "rclone-cache"),
                        "--config",
                        "/dev/null",
                    ],
                    rclone_mnt,
                    rclone_mnt / "object.bin",
                ),
                rclone_mnt / "object.bin",
                state,
            )

        for name, make_mount, path, state in contenders():
            try:
                os.sync()
                with make_mount():
                    mark = log.stat().st_size
                    cold = timed_cat(path)
                    cold_origin = origin_bytes(log, mark)
                    warm = timed_cat(path)
                shutil.rmtree(state / f"{name}-data", ignore_errors=True)
                shutil.rmtree(state / f"{name}-cache", ignore_errors=True)
                with make_mount():
                    mark = log.stat().st_size
                    latencies = random_reads(path, size, args.random_reads)
                    time.sleep(1)  # let background fetches finish so their bytes are counted
                    random_origin = origin_bytes(log, mark)
            finally:
                shutil.rmtree(state, ignore_errors=True)
            latencies.sort()
            results[name] = {
                "cold_gbps": size / cold / 1e9,
                "warm_gbps": size / warm / 1e9,
                "cold_origin_bytes": cold_origin,
                "random_4k_median_ms": 1000 * statistics.median(latencies),
                "random_4k_p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
                "random_origin_bytes_per_read": random_origin / args.random_reads,
            }
            r = results[name]
            print(
                f"{name:7s} cold {r['cold_gbps']:5.2f} GB/s  warm {r['warm_gbps']:5.2f} GB/s  "
                f"random 4K median {r['random_4k_median_ms']:6.2f} ms p99 {r['random_4k_p99_ms']:6.2f} ms  "
                f"origin/read {r['random_origin_bytes_per_read'] / 1e6:5.2f} MB",
                flush=True,
            )

    os.sync()
    local = timed_cat(work / "www" / "object.bin")
    results["local disk"] = {"warm_gbps": size / local / 1e9}
    print(f"local disk (page cache) {results['local disk']['warm_gbps']:.2f} GB/s")
    d, r = results["dffs"], results["rclone"]
    print()
    print(f"cold sequential dffs/rclone = {d['cold_gbps'] / r['cold_gbps']:.2f}x")
    print(f"warm sequential dffs/rclone = {d['warm_gbps'] / r['warm_gbps']:.2f}x")
    print(f"random 4K median latency rclone/dffs = {r['random_4k_median_ms'] / d['random_4k_median_ms']:.2f}x")
    print(
        f"origin bytes per random 4K read rclone/dffs = "
        f"{r['random_origin_bytes_per_read'] / max(1, d['random_origin_bytes_per_read']):.2f}x"
    )
    print(
        json.dumps(
            {
                "bench": "mount",
                "size_bytes": size,
                "random_reads": args.random_reads,
                "results": {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in results.items()},
                "machine": machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
