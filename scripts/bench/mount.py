#!/usr/bin/env python3
"""The lazy mount against rclone's and against curl, side by side, on one nginx origin.

One object (default 1 GiB) on nginx on 127.0.0.1, read through `dffs mount` and
through `rclone mount :http: --vfs-cache-mode full --read-only` (the competitor),
with `curl` reading the same URL to /dev/null (the network path's ceiling) and the
file itself read straight from disk ("local file", the page cache's ceiling).
Every sequential read is `dd bs=1M` to /dev/null. Each run, for each contender:

  cold sequential    a fresh mount whose cache is empty (dffs's data dir, rclone's
                     --cache-dir: deleted before the mount starts); the origin's copy
                     is in the page cache; the mount has looked the file up (a stat,
                     untimed: dffs sends a HEAD, rclone lists the directory) but read
                     no data. curl: one GET of the URL.
  mount CPU per cold GiB
                     user + system CPU seconds of the mount process during the cold
                     read, per GiB (from /proc/PID/stat)
  warm sequential    the same read again right after, on the same mount: both have
                     read the file once and keep it in their cache and the page cache.
                     For "local file": the file read from the page cache. And "local
                     file, 4 KiB folios": a copy on a tmpfs mounted huge=never, read
                     from the page cache: the kernel copies reads out of the page cache
                     folio by folio, ext4 caches this file in 2 MiB folios and FUSE (on
                     this kernel) in 4 KiB ones, so this is the ceiling for a FUSE mount
  warm page-cache folio
                     the mean folio of the file's first 16 MiB in the page cache after
                     the warm read, in 4 KiB pages (mmap + /proc/self/pagemap +
                     /proc/kpageflags)
  remount, page cache dropped
                     the mount stopped, `echo 3 > /proc/sys/vm/drop_caches`, the mount
                     started again on the same cache (dffs's pieces and rclone's vfs
                     cache stay) and the file looked up; then the same read. For
                     "local file": the file read from disk after the same drop.
  sequential origin traffic
                     body bytes the origin sent for the object during these three reads
                     and the check after them, in units of the object's size: 1.00 =
                     read once
  random 4 KiB       --random-reads preads at random 4 KiB-aligned offsets (the same
                     offsets for both in a run) on another fresh mount with an empty
                     cache: median and p99 latency of each pread; and the origin's body
                     bytes they cost, per read, counted once the origin has been quiet
                     for a second and the mount has stopped (background fetches count)
  stream             a second object of --stream-mib (default 4 GiB) read once with dd
                     on a fresh mount with an empty cache, while the mount process's
                     VmRSS (/proc/PID/status) is sampled every 50 ms: its throughput,
                     the peak RSS and the RSS once the read has ended

`--variant NAME=KEY=VALUE[,KEY=VALUE...]` adds a contender "dffs NAME": dffs with
those mount settings (a TOML config file, e.g. `push_pieces=false`); `--tree NAME=DIR`
one that runs another checkout's dffs (`PYTHONPATH=DIR`, e.g. main before a change).
Both are measured in the same runs (sequential phases only), for before/after figures
of one lever. Mounts start untimed and are
unmounted before the next phase's cache is emptied. The file read through each mount
is compared with the original after the sequential phases (untimed). Prints the
harness's table, ratios and one JSON line. Root (FUSE, drop_caches). Usage:

  .venv/bin/python scripts/bench/mount.py [--size-mib 1024] [--random-reads 200] [--stream-mib 4096]
      [--variant NAME=KEY=VALUE]... [--runs 3] [--smoke]
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
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parents[1] / "tests")]  # the harness; the tests' real parts
import harness  # noqa: E402
from common import DFFS, MiB, make_file, pages_per_folio, run, timed, wait_quiet, warm_page_cache  # noqa: E402
from mounts import force_unmount, is_mounted  # noqa: E402
from origins import NginxOrigin  # noqa: E402

GiB = 1 << 30
#: The contender that shows what a page cache of 4 KiB folios reads at (FUSE's, on this kernel).
SMALL_FOLIOS = "local file, 4 KiB folios"


class Mount:
    """One FUSE mount process, up once ``ready`` shows in its directory's listing; then
    ``file`` (and ``also``) are looked up (stat), so their metadata is known before any
    timed read."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        mountpoint: Path,
        ready: Path,
        files: list[Path],
        log: Path,
        env: dict[str, str] | None = None,
    ):
        self.name, self.argv, self.mountpoint, self.ready, self.log_path = name, argv, mountpoint, ready, log
        self.files, self.env = files, env

    def __enter__(self) -> Mount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env
            )
        deadline = time.monotonic() + 30
        while not (is_mounted(self.mountpoint) and _listed(self.ready)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} mount did not come up: {tail}")
            time.sleep(0.05)
        try:
            for file in self.files:
                file.stat()
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

    def cpu_seconds(self) -> float:
        """User + system CPU the mount process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _listed(path: Path) -> bool:
    """Whether ``path`` shows in its directory's listing (a stat too early can
    make rclone cache an error)."""
    try:
        return path.name in os.listdir(path.parent)
    except OSError:
        return False


def dd(path: Path) -> None:
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True, check=True)


def drop_all_caches() -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``: every clean page and dentry on the machine."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """VmRSS of one process every ``interval`` seconds in a thread, while the block runs."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self._stop = threading.Event()

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                self.samples.append(rss_kib(self.pid))
            except OSError:
                return
            if self._stop.wait(self.interval):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME=KEY=VALUE[,KEY=VALUE...]`` -> (NAME, {KEY: VALUE})."""
    name, sep, rest = text.partition("=")
    settings = dict(item.split("=", 1) for item in rest.split(",") if "=" in item)
    if not name or not sep or not settings:
        raise SystemExit(f"bad --variant {text!r}: expected NAME=KEY=VALUE[,KEY=VALUE...]")
    return name, settings


def toml_value(value: str) -> str:
    if value.lower() in ("true", "false") or value.lstrip("-").replace(".", "", 1).isdigit():
        return value.lower() if value.lower() in ("true", "false") else value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--size-mib", type=int, help="object size (default 1024; --smoke: 16)")
    p.add_argument("--random-reads", type=int, help="random 4 KiB reads per run (default 200; --smoke: 20; 0: none)")
    p.add_argument("--stream-mib", type=int, help="streamed object's size (default 4096; --smoke: 32; 0: none)")
    p.add_argument("--variant", action="append", default=[], help="NAME=KEY=VALUE,...: dffs with other settings")
    p.add_argument("--tree", action="append", default=[], help="NAME=DIR: another checkout's dffs")
    p.add_argument("--workdir", default="/var/tmp/dffs-bench-mount")
    args = harness.parse(p, size_mib=(1024, 16), random_reads=(200, 20), stream_mib=(4096, 32))
    if not shutil.which("rclone"):
        sys.exit("rclone is not installed: run scripts/setup.sh (it installs Debian's rclone)")
    variants = dict(parse_variant(v) for v in args.variant)
    trees = {}
    for text in args.tree:
        name, _, directory = text.partition("=")
        if not name or not Path(directory, "dffs", "__init__.py").is_file():
            raise SystemExit(f"bad --tree {text!r}: expected NAME=DIR with DIR/dffs in it")
        trees[f"dffs {name}"] = str(Path(directory).resolve())
    size, stream_size = args.size_mib * MiB, args.stream_mib * MiB
    work = Path(args.workdir)
    obj, stream_obj = work / "www" / "object.bin", work / "www" / "stream.bin"
    make_file(obj, size)
    if stream_size:
        make_file(stream_obj, stream_size)
    state = Path(tempfile.mkdtemp(prefix="state.", dir=work))
    tmpfs = state / "tmpfs-4k"
    configs: dict[str, Path] = {}
    for name, settings in variants.items():
        configs[f"dffs {name}"] = state / f"variant-{len(configs)}.toml"
        configs[f"dffs {name}"].write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()))
    dffs_like = ["dffs", *configs, *trees]
    mounts = [*dffs_like, "rclone"]

    figures = [
        harness.Figure("cold sequential", "GB/s"),
        harness.Figure("mount CPU per cold GiB", "CPU-s", lower_is_better=True),
        harness.Figure("warm sequential", "GB/s"),
        harness.Figure("warm page-cache folio", "pages", digits=0),
        harness.Figure("remount, page cache dropped", "GB/s"),
        harness.Figure("sequential origin traffic", "x object", lower_is_better=True),
    ]
    if args.random_reads:
        figures += [
            harness.Figure("random 4 KiB median", "ms", lower_is_better=True),
            harness.Figure("random 4 KiB p99", "ms", lower_is_better=True),
            harness.Figure("random origin traffic", "MB/read", lower_is_better=True),
        ]
    if stream_size:
        figures += [
            harness.Figure("stream", "GB/s"),
            harness.Figure("stream RSS peak", "MiB", lower_is_better=True, digits=0),
            harness.Figure("stream RSS at end", "MiB", lower_is_better=True, digits=0),
        ]
    local_figures = ("warm sequential", "remount, page cache dropped")
    bench = harness.Bench(
        "mount",
        contenders=[*dffs_like, "rclone", "curl", "local file", SMALL_FOLIOS],
        figures=figures,
        comparisons=[
            *(harness.Comparison(who, "rclone") for who in dffs_like),
            *(harness.Comparison(who, "curl", ("cold sequential",)) for who in dffs_like),
            *(harness.Comparison(who, "local file", local_figures) for who in dffs_like),
            *(harness.Comparison(who, SMALL_FOLIOS, ("warm sequential",)) for who in dffs_like),
            *(harness.Comparison("dffs", who) for who in [*configs, *trees]),
        ],
        params={
            "size_bytes": size,
            "random_reads": args.random_reads,
            "stream_bytes": stream_size,
            "targets": "cold sequential dffs/rclone >= 2 and dffs/curl >= 0.5; warm dffs/local file >= 0.5",
            "variants": variants,
            "trees": trees,
            "workdir": str(work),
            "smoke": args.smoke,
        },
        runs=args.runs,
    )
    try:
        with NginxOrigin(work / "www", workdir=work / "nginx") as origin:
            port = origin.port

            def mount(name: str, *, empty: bool = True) -> tuple[Mount, Path, Path]:
                """A mount of ``name`` (with an empty cache unless ``empty`` is false); the
                object's path through it; the cache dir."""
                mnt, cache = state / f"{name}-mnt".replace(" ", "_"), state / f"{name}-cache".replace(" ", "_")
                if empty:
                    shutil.rmtree(cache, ignore_errors=True)
                log = state / f"{name}.log".replace(" ", "_")
                if name in dffs_like:
                    argv = [*DFFS, "mount", str(mnt), "--data-dir", str(cache), "--upload-port", "0"]
                    argv += ["--rpc-port", "0", "--proxy-port", "-1", "--metrics-port", "0"]
                    if name in configs:
                        argv += ["--config", str(configs[name])]
                    # PYTHONSAFEPATH: `python -m` would put the working directory (this tree, when run
                    # from it) ahead of PYTHONPATH, and the baseline would be this tree again.
                    env = {**os.environ, "PYTHONPATH": trees[name], "PYTHONSAFEPATH": "1"} if name in trees else None
                    base, ready = mnt / "http" / f"127.0.0.1:{port}", mnt / "http"
                else:
                    env = None
                    argv = ["rclone", "mount", ":http:", str(mnt), "--http-url", f"{origin.base_url}/"]
                    argv += ["--vfs-cache-mode", "full", "--read-only", "--cache-dir", str(cache)]
                    argv += ["--config", "/dev/null"]
                    base = mnt
                    ready = mnt / obj.name
                path = base / obj.name
                return Mount(name, argv, mnt, ready, [path], log, env), path, cache

            def sequential(name: str) -> dict[str, float]:
                made, path, cache = mount(name)
                warm_page_cache(obj)
                with made:
                    origin.clear_log()
                    used = made.cpu_seconds()
                    cold = timed(lambda: dd(path))
                    used = made.cpu_seconds() - used
                    warm = timed(lambda: dd(path))
                    folio = pages_per_folio(path)
                drop_all_caches()
                again, path, _ = mount(name, empty=False)
                with again:
                    dropped = timed(lambda: dd(path))
                    if not filecmp.cmp(path, obj, shallow=False):
                        raise RuntimeError(f"{path} differs from the object")
                wait_quiet(origin)
                return {
                    "cold sequential": size / cold / 1e9,
                    "mount CPU per cold GiB": used * GiB / size,
                    "warm sequential": size / warm / 1e9,
                    "warm page-cache folio": folio,
                    "remount, page cache dropped": size / dropped / 1e9,
                    "sequential origin traffic": origin.body_bytes(f"/{obj.name}") / size,
                }

            def randomly(name: str, seed: int) -> dict[str, float]:
                made, path, _ = mount(name)
                warm_page_cache(obj)
                with made:
                    origin.clear_log()
                    latencies = sorted(random_reads(path, size, args.random_reads, seed))
                    wait_quiet(origin, quiet=1.0)  # background fetches of the pieces read
                wait_quiet(origin)
                return {
                    "random 4 KiB median": 1000 * statistics.median(latencies),
                    "random 4 KiB p99": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
                    "random origin traffic": origin.body_bytes(f"/{obj.name}") / args.random_reads / 1e6,
                }

            def stream(name: str) -> dict[str, float]:
                made, path, cache = mount(name)
                path = path.with_name(stream_obj.name)
                warm_page_cache(stream_obj)
                with made:
                    path.stat()
                    with RssSampler(made.proc.pid) as rss:
                        took = timed(lambda: dd(path))
                    end = rss_kib(made.proc.pid)
                shutil.rmtree(cache, ignore_errors=True)  # 4 GiB per contender: not kept for later phases
                return {
                    "stream": stream_size / took / 1e9,
                    "stream RSS peak": max([*rss.samples, end]) / 1024,
                    "stream RSS at end": end / 1024,
                }

            def curl() -> dict[str, float]:
                warm_page_cache(obj)
                url = f"{origin.base_url}/{obj.name}"
                took = timed(lambda: subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True))
                return {"cold sequential": size / took / 1e9}

            def local() -> dict[str, float]:
                warm_page_cache(obj)
                warm = timed(lambda: dd(obj))
                drop_all_caches()
                dropped = timed(lambda: dd(obj))
                warm_page_cache(obj)
                return {
                    "warm sequential": size / warm / 1e9,
                    "warm page-cache folio": pages_per_folio(obj),
                    "remount, page cache dropped": size / dropped / 1e9,
                }

            def local_in_small_folios() -> dict[str, float]:
                """The object on a tmpfs that keeps 4 KiB folios (``huge=never``), read from the
                page cache: what a page cache in the folios FUSE's gets can give."""
                tmpfs.mkdir(exist_ok=True)
                run(["mount", "-t", "tmpfs", "-o", f"size={size + 16 * MiB},huge=never", "tmpfs", str(tmpfs)])
                try:
                    copy = tmpfs / obj.name
                    shutil.copyfile(obj, copy)
                    warm_page_cache(copy)
                    warm = timed(lambda: dd(copy))
                    return {"warm sequential": size / warm / 1e9, "warm page-cache folio": pages_per_folio(copy)}
                finally:
                    run(["umount", str(tmpfs)])

            for run_number, who in bench.schedule():
                if who == "local file":
                    bench.record(run_number, who, local())
                elif who == SMALL_FOLIOS:
                    bench.record(run_number, who, local_in_small_folios())
                elif who == "curl":
                    bench.record(run_number, who, curl())
                else:
                    values = sequential(who)
                    if args.random_reads and who in ("dffs", "rclone"):
                        values |= randomly(who, seed=run_number)
                    if stream_size and who in ("dffs", "rclone"):
                        values |= stream(who)
                    bench.record(run_number, who, values)
    finally:
        if is_mounted(tmpfs):
            run(["umount", str(tmpfs)])
        for name in mounts:
            mnt = state / f"{name}-mnt".replace(" ", "_")
            if is_mounted(mnt):
                force_unmount(mnt)
        shutil.rmtree(state, ignore_errors=True)
    bench.report()


if __name__ == "__main__":
    main()
