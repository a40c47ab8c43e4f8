#!/usr/bin/env python3
"""Datasets by path: `dffs mount` against `rclone mount --vfs-cache-mode full`, side by side.

One nginx origin on 127.0.0.1 (autoindex on) serves every dataset; each
contender gets a fresh mount with an empty cache for each part of each run.

(a) small files   --small 3000 files of 112 KiB and --tiny 10000 of 16 KiB, each
                  set read whole by a DataLoader-shaped reader: 4 worker processes,
                  shuffled order (the same order for both in a run), batches of 64.
                  Before timing, the mount's tree is walked (os.walk, as a Dataset's
                  constructor does; untimed). Cold: the first read of every file.
                  Warm: every file again, in another order, on the same mount.
                  Figures: files/s cold and warm, seconds to the first batch of 64
                  (cold), and origin requests per file during the walk and the cold
                  read (HEADs and GETs: rclone HEADs each file it lists; listings
                  excluded, those are counted apart, per tree). Each contender mounts
                  the dataset's parent, so that its readiness check (a listing of the
                  mount's root) does none of the dataset's work untimed.
                  For dffs also the mount process's CPU time per cold file (µs),
                  from /proc (user + system of the mount process). The origin's copies
                  are read once before each contender's cold pass (untimed), so that
                  nginx serves them from memory for both: after a `drop_caches` (the
                  mount benchmark's remount phase) the first contender of run 1 would
                  otherwise wait for the disk.
(c) parquet       one Parquet file (--parquet-mib, 2 MB column chunks); pyarrow
                  reads one column chunk of one row group through each cold mount.
                  Figure: origin body bytes, against the bound the issue sets (the
                  chunk + the footer + 2 pieces), printed beside them.
(d) listing       --entries files in one autoindex directory, and --entries objects
                  under one S3 prefix (moto's server stands in for S3: there is no
                  S3 here); `os.scandir` then `stat` of every entry through each
                  fresh mount: seconds and origin requests (nginx's log; moto's
                  request log lines).

(b) P2P           (--parts b) hosts as network namespaces on a bridge: the origin
                  (its link shaped to --origin-rate with tc tbf), a scheduler, a
                  seed and 4 peers, each peer a `dffs daemon --mount` with the
                  dataset as a --source. Peer 1 reads --p2p-files files of 112 KiB
                  (the reader above, through its mount), then peers 2, 3 and 4, one
                  after another. The competitor is rclone's mount on peer 2's host
                  reading straight from the shaped origin. Figures: files/s of
                  peer 1, of peers 2-4 (their median) and of rclone; origin body
                  bytes over the dataset's bytes and origin requests over the number
                  of files (listings and metadata included), for all four peers, and
                  the origin requests of peers 2-4 alone (the issue's bound: 5 %);
                  peers 2-4's scheduler calls per file, from their logs (AnnouncePeer
                  answers, batched registrations, listings' StatTasks).

Root (FUSE). Every run alternates the order of the contenders (the harness).
Usage:

  .venv/bin/python scripts/bench/dataset.py [--runs 3] [--parts a,c,d] [--smoke] [--profile OUT.svg]
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parents[1] / "tests")]  # the harness; the tests' real parts
import harness  # noqa: E402
from common import warm_page_cache  # noqa: E402
from mounts import force_unmount, is_mounted  # noqa: E402
from origins import NginxOrigin  # noqa: E402

DFFS = [sys.executable, "-m", "dffs"]
#: Contender "dffs base": the dffs of another source tree (--baseline-tree), run by the same interpreter.
BASELINE = "dffs base"
_TREES: dict[str, str] = {}


def _is_dffs(who: str) -> bool:
    return who in ("dffs", BASELINE)


def _env(who: str) -> dict[str, str] | None:
    """The environment of a dffs contender's processes: the baseline's tree first on the import path."""
    if who != BASELINE:
        return None
    # PYTHONSAFEPATH: `python -m dffs` would put the working directory (this tree, when the benchmark
    # runs from it) ahead of PYTHONPATH, and the baseline would be this tree again.
    return {**os.environ, "PYTHONPATH": _TREES[BASELINE], "PYTHONSAFEPATH": "1"}


KiB, MiB = 1 << 10, 1 << 20
PIECE = 4 * MiB
BATCH = 64
WORKERS = 4


# ---- the datasets on disk ---------------------------------------------------------------------------


def make_tree(root: Path, count: int, size: int, per_dir: int = 1000) -> list[str]:
    """``count`` files of ``size`` random bytes under ``root`` (at most ``per_dir`` per directory, as image
    datasets shard them); kept when already there. Returns the relative paths."""
    paths = [f"d{i // per_dir:03d}/f{i:06d}.bin" for i in range(count)]
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == f"{count} {size}":
        return paths
    shutil.rmtree(root, ignore_errors=True)
    for rel in paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    marker.write_text(f"{count} {size}")
    return paths


def make_listing_dir(root: Path, entries: int) -> None:
    marker = root.parent / f".{root.name}.complete"
    if marker.exists() and marker.read_text() == str(entries):
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for i in range(entries):
        (root / f"e{i:07d}.bin").write_bytes(b"x" * (i % 100))
    marker.write_text(str(entries))


def make_parquet(path: Path, mib: int) -> None:
    if path.exists():
        return
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = 8
    rows = mib * MiB // (8 * columns)
    rng = np.random.default_rng(0)
    table = pa.table({f"c{i}": rng.random(rows) for i in range(columns)})
    # 2 MB column chunks, uncompressed: the shape of the example.
    pq.write_table(table, path, row_group_size=2 * MiB // 8, compression="none")


# ---- mounts -----------------------------------------------------------------------------------------


class Mount:
    """A FUSE mount process, up once ``ready`` can be listed."""

    def __init__(self, name: str, argv: list[str], mountpoint: Path, log: Path, env: dict[str, str] | None = None):
        self.name, self.argv, self.mountpoint, self.log_path, self.env = name, argv, mountpoint, log, env

    def __enter__(self) -> Mount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env
            )
        deadline = time.monotonic() + 60
        while not (is_mounted(self.mountpoint) and _lists(self.mountpoint)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"{self.name} did not mount: {self.log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        return self

    def cpu_seconds(self) -> float:
        """User + system CPU of the mount process (and its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if is_mounted(self.mountpoint):
            force_unmount(self.mountpoint)


def _lists(path: Path) -> bool:
    try:
        os.listdir(path)
        return True
    except OSError:
        return False


def mount(name: str, state: Path, url: str, tag: str) -> tuple[Mount, Path]:
    """A fresh mount of ``url`` (a directory) by contender ``name`` with an empty cache; and the directory
    through which the dataset is seen."""
    key = name.replace(" ", "_")
    mnt, cache = state / f"{key}-{tag}-mnt", state / f"{key}-{tag}-cache"
    shutil.rmtree(cache, ignore_errors=True)
    log = state / f"{key}-{tag}.log"
    if _is_dffs(name):
        argv = [*DFFS, "mount", str(mnt), "--data-dir", str(cache), "--source", f"ds={url}"]
        argv += ["--upload-port", "0", "--rpc-port", "0", "--proxy-port", "-1", "--metrics-port", "-1"]
        return Mount(name, argv, mnt, log, _env(name)), mnt / "ds"
    # The directory's parent is mounted, so that the dataset is one level down for rclone as for dffs
    # (mnt/ds): the readiness check lists the mount's root, and at the dataset itself it would do
    # rclone's listing of it (and a HEAD per file) before anything is timed or counted.
    parent, _, leaf = url.rstrip("/").rpartition("/")
    argv = ["rclone", "mount", ":http:", str(mnt), "--http-url", f"{parent}/", "--vfs-cache-mode", "full"]
    argv += ["--read-only", "--cache-dir", str(cache), "--config", "/dev/null"]
    return Mount(name, argv, mnt, log), mnt / leaf


# ---- the reader: DataLoader-shaped ------------------------------------------------------------------


def _read_batch(paths: list[str]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            total += len(f.read())
    return total


def read_all(pool, paths: list[str], seed: int) -> tuple[float, float, int]:
    """Read every file whole in a shuffled order, BATCH files per task over the pool's workers (as a
    DataLoader hands batches to its workers); (seconds, seconds to the first batch, bytes)."""
    order = list(paths)
    random.Random(seed).shuffle(order)
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    started = time.perf_counter()
    first = None
    total = 0
    for got in pool.imap(_read_batch, batches):
        if first is None:
            first = time.perf_counter() - started
        total += got
    return time.perf_counter() - started, first or 0.0, total


def walk(root: Path) -> list[str]:
    found = []
    for dirpath, _, files in os.walk(root):
        found += [os.path.join(dirpath, f) for f in files if not f.startswith(".")]
    return sorted(found)


def origin_counts(origin: NginxOrigin) -> tuple[int, int]:
    """(requests for files, requests for listings) in the origin's log since it was last cleared."""
    origin.sync_log()
    entries = origin.requests()
    listings = sum(1 for e in entries if e.path.endswith("/"))
    return len(entries) - listings, listings


# ---- the parts --------------------------------------------------------------------------------------


def warm_origin_copies(directory: Path, rels) -> None:
    """Read the origin's files once, so that the cold pass measures the mounts, not the disk."""
    for rel in rels:
        warm_page_cache(directory / rel)


def part_a(bench, origin, state, sets, run, who, pool, profile):
    figures = {}
    for label, (url, rels, size) in sets.items():
        served = origin.root / url.split("/")[-2]  # the origin's copy of this set
        warm_origin_copies(served, rels)
        made, root = mount(who, state, url, label)
        with made:
            origin.clear_log()
            paths = walk(root)
            if len(paths) != len(rels):
                raise RuntimeError(f"{who} lists {len(paths)} files of {label}, not {len(rels)}")
            walk_requests, listings = origin_counts(origin)  # rclone HEADs every file it lists
            origin.clear_log()
            cpu_before = made.cpu_seconds() if _is_dffs(who) else 0.0
            spy = _py_spy(made.proc.pid, profile, f"{who}-{label}") if _is_dffs(who) and profile and run == 1 else None
            cold, first, total = read_all(pool, paths, seed=run)
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                spy.wait(60)
            cpu = made.cpu_seconds() - cpu_before if _is_dffs(who) else 0.0
            if total != len(rels) * size:
                raise RuntimeError(f"{who} read {total} bytes of {label}, not {len(rels) * size}")
            requests, more_listings = origin_counts(origin)
            warm, _, _ = read_all(pool, paths, seed=run + 1000)
            sample = random.Random(run).sample(rels, min(20, len(rels)))
            for rel in sample:
                if (root / rel).read_bytes() != (served / rel).read_bytes():
                    raise RuntimeError(f"{who}: {rel} differs from the origin's")
        n = len(rels)
        figures |= {
            f"{label} cold": n / cold,
            f"{label} warm": n / warm,
            f"{label} first batch": first,
            f"{label} origin requests/file": (walk_requests + requests) / n,
            f"{label} listing requests": listings + more_listings,
        }
        if _is_dffs(who):
            figures[f"{label} mount CPU/file"] = cpu / n * 1e6
    bench.record(run, who, figures)


def part_c(bench, origin, state, url, parquet, run, who):
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(parquet).metadata
    group = meta.num_row_groups // 2
    made, root = mount(who, state, url, "parquet")
    with made:
        origin.clear_log()
        table = pq.ParquetFile(root / parquet.name).read_row_group(group, columns=["c3"])
        if table.num_rows != meta.row_group(group).num_rows:
            raise RuntimeError(f"{who}: read {table.num_rows} rows")
        time.sleep(1.0)  # background completions of the pieces read (dffs) and rclone's readahead count too
        origin.sync_log()
        sent = sum(e.body_bytes for e in origin.requests() if e.path.endswith(".parquet"))
    bench.record(run, who, {"parquet origin MB": sent / 1e6})


def _scan(root: Path) -> tuple[float, int]:
    started = time.perf_counter()
    count = 0
    with os.scandir(root) as it:
        for entry in it:
            entry.stat()
            count += 1
    return time.perf_counter() - started, count


def part_d(bench, origin, moto, state, url, entries, run, who):
    figures = {}
    made, root = mount(who, state, url, "listing")
    with made:
        origin.clear_log()
        seconds, count = _scan(root)
        origin.sync_log()
        requests = len(origin.requests())
    if count != entries:
        raise RuntimeError(f"{who} listed {count} entries, not {entries}")
    figures |= {"listing seconds": seconds, "listing requests": requests}
    if moto is not None:
        made, root = moto.mount(who, state)
        with made:
            before = moto.requests()
            seconds, count = _scan(root)
            requests = moto.requests() - before
        if count != entries:
            raise RuntimeError(f"{who} listed {count} S3 objects, not {entries}")
        figures |= {"S3 listing seconds": seconds, "S3 listing requests": requests}
    bench.record(run, who, figures)


class Moto:
    """moto's S3 server (no authentication) with ``entries`` objects under ``list/`` of one bucket."""

    BUCKET, KEY, SECRET = "dffs-bench", "bench", "bench-secret"

    def __init__(self, work: Path, entries: int):
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "moto.log"
        self.entries = entries

    def __enter__(self) -> Moto:
        import concurrent.futures

        import botocore.session

        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        os.environ.update(
            AWS_ACCESS_KEY_ID=self.KEY,
            AWS_SECRET_ACCESS_KEY=self.SECRET,
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_DEFAULT_REGION="us-east-1",
            AWS_REGION="us-east-1",
        )
        client = botocore.session.get_session().create_client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=self.BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.2)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda i: client.put_object(Bucket=self.BUCKET, Key=f"list/e{i:07d}.bin", Body=b"x" * (i % 100)),
                    range(self.entries),
                )
            )
        return self

    def requests(self) -> int:
        """Requests moto has logged so far (one line each)."""
        self.log.flush()
        return sum(1 for line in self.log_path.read_text(errors="replace").splitlines() if '" 200' in line)

    def mount(self, who: str, state: Path) -> tuple[Mount, Path]:
        key = who.replace(" ", "_")
        mnt, cache = state / f"{key}-s3-mnt", state / f"{key}-s3-cache"
        shutil.rmtree(cache, ignore_errors=True)
        log = state / f"{key}-s3.log"
        if _is_dffs(who):
            argv = [*DFFS, "mount", str(mnt), "--data-dir", str(cache), "--source", f"s3ds=s3://{self.BUCKET}/list/"]
            argv += ["--upload-port", "0", "--rpc-port", "0", "--proxy-port", "-1", "--metrics-port", "-1"]
            return Mount(who, argv, mnt, log, _env(who)), mnt / "s3ds"
        argv = ["rclone", "mount", f":s3:{self.BUCKET}/list", str(mnt), "--s3-provider", "Other"]
        argv += ["--s3-endpoint", self.endpoint, "--s3-access-key-id", self.KEY, "--s3-secret-access-key", self.SECRET]
        argv += ["--s3-force-path-style", "--vfs-cache-mode", "full", "--read-only", "--cache-dir", str(cache)]
        argv += ["--config", "/dev/null"]
        # rclone refuses AWS_CA_BUNDLE with its own transport; the endpoint is plain http anyway.
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        return Mount(who, argv, mnt, log, env), mnt

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _py_spy(pid: int, out: str, label: str):
    if not shutil.which("py-spy") and not Path(sys.executable).with_name("py-spy").exists():
        raise SystemExit("--profile needs py-spy: pip install -e '.[bench]'")
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    target = Path(out).with_name(f"{Path(out).stem}-{label.replace(' ', '_')}{Path(out).suffix}")
    fmt = "raw" if target.suffix == ".txt" else "flamegraph"  # raw: collapsed stacks, for reading as text
    proc = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "250",
            "--output",
            str(target),
            "--format",
            fmt,
            "--threads",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches before the timed read starts
    return proc


def part_b(bench, net, origin, origin_host, work, state, rels, size, run, who, pool):
    """One run of the P2P part for ``who`` (a fresh cluster, or a fresh rclone mount, each time)."""
    from cluster import Daemon, Process

    url = f"http://{origin_host.ip}:8080/p2p/"
    n = len(rels)
    warm_origin_copies(origin.root / "p2p", rels)
    if who == "rclone":
        host = net.hosts[4]  # peer 2's host (origin, sched, seed, p1, p2, ...)
        mnt, cache = state / f"rclone-p2p-{run}-mnt", state / f"rclone-p2p-{run}-cache"
        argv = ["rclone", "mount", ":http:", str(mnt), "--http-url", url, "--vfs-cache-mode", "full", "--read-only"]
        argv += ["--cache-dir", str(cache), "--config", "/dev/null"]
        with Mount("rclone", host.command(argv), mnt, state / "rclone-p2p.log"):
            paths = walk(mnt)
            origin.clear_log()
            seconds, _, total = read_all(pool, paths, seed=run)
        if total != n * size:
            raise RuntimeError(f"rclone read {total} bytes, not {n * size}")
        bench.record(run, who, {"p2p files/s": n / seconds})
        return
    sched_host, seed_host, *peer_hosts = net.hosts[1:]
    tmp = Path(tempfile.mkdtemp(prefix=f"p2p-{run}.", dir=state))
    processes = []
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "PYTHONSAFEPATH")}
    if who == BASELINE:
        os.environ.update(_env(BASELINE) or {})  # the cluster's processes inherit it
    try:
        address = f"{sched_host.ip}:8002"
        sched = Process(["scheduler", "--listen", address], tmp / "scheduler.log", r"listening on")
        sched.argv = sched_host.command(_quiet(sched.argv))
        processes.append(sched.start())
        seed = Daemon(tmp, "seed", address, ip=seed_host.ip, seed=True, extra=("--proxy-port", "-1"))
        seed.argv = seed_host.command(_quiet(seed.argv))
        processes.append(seed.start())
        peers = []
        for i, host in enumerate(peer_hosts, start=1):
            extra = ("--source", f"ds={url}", "--proxy-port", "-1", "--metrics-port", "-1")
            peer = Daemon(tmp, f"p{i}", address, ip=host.ip, mount=True, extra=extra)
            peer.argv = host.command(_quiet(peer.argv))
            processes.append(peer.start())
            peers.append(peer)
        origin.clear_log()
        rates = []
        entries = []
        for peer in peers:
            paths = walk(peer.mountpoint / "ds")
            if len(paths) != n:
                raise RuntimeError(f"{peer.log_path.stem} lists {len(paths)} files, not {n}")
            seconds, _, total = read_all(pool, paths, seed=run)
            if total != n * size:
                raise RuntimeError(f"{peer.log_path.stem} read {total} bytes, not {n * size}")
            rates.append(n / seconds)
            if peer is peers[0]:
                origin.sync_log()
                entries = origin.clear_log()  # peer 1's (and the seed it triggered): the dataset's one fetch
        origin.sync_log()
        later = origin.requests()  # peers 2-4, who read after peer 1
        entries += later
        # Scheduler calls of peers 2-4, from their logs: each conversation's answers (register,
        # reschedules), each batched registration, each directory's StatTasks.
        calls = sum(scheduler_calls(peer.output()) for peer in peers[1:])
        bench.record(
            run,
            who,
            {
                "p2p peer 1 files/s": rates[0],
                "p2p files/s": sorted(rates[1:])[len(rates[1:]) // 2],
                "p2p origin bytes/dataset": sum(e.body_bytes for e in entries) / (n * size),
                "p2p origin requests/file": len(entries) / n,
                "p2p peers 2-4 origin requests/file": len(later) / n,
                "p2p peers 2-4 scheduler calls/file": calls / (len(peers[1:]) * n),
            },
        )
    finally:
        for name, value in saved.items():  # as it was: what the whole run was started with stays
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for p in reversed(processes):
            p.stop()


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--parts", default="a,c,d", help="which parts to run (a, c, d)")
    p.add_argument("--small", type=int, help="files of 112 KiB (default 3000; --smoke: 64)")
    p.add_argument("--tiny", type=int, help="files of 16 KiB (default 10000; --smoke: 128)")
    p.add_argument("--entries", type=int, help="entries of the listing part (default 100000; --smoke: 500)")
    p.add_argument("--parquet-mib", type=int, help="Parquet file size (default 256; --smoke: 16)")
    p.add_argument("--p2p-files", type=int, help="files of 112 KiB in the P2P part (default 1200; --smoke: 48)")
    p.add_argument("--origin-rate", default="200mbit", help="the origin's link in the P2P part (tc tbf rate)")
    p.add_argument(
        "--profile",
        metavar="OUT.svg|OUT.txt",
        help="py-spy profile of the dffs mount during run 1's cold reads (.txt: collapsed stacks)",
    )
    p.add_argument(
        "--baseline-tree",
        metavar="DIR",
        help="also run the dffs of this source tree (e.g. a worktree of main) as 'dffs base': before and after",
    )
    p.add_argument("--workdir", default="/var/tmp/dffs-bench-dataset")
    args = harness.parse(
        p, small=(3000, 64), tiny=(10000, 128), entries=(100_000, 500), parquet_mib=(256, 16), p2p_files=(1200, 48)
    )
    parts = set(args.parts.split(","))
    if args.baseline_tree:
        _TREES[BASELINE] = str(Path(args.baseline_tree).resolve())
    if not shutil.which("rclone"):
        sys.exit("rclone is not installed: run scripts/setup.sh")
    work = Path(args.workdir)
    www = work / "www"
    sets: dict[str, tuple[str, list[str], int]] = {}
    figures: list[harness.Figure] = []
    if "a" in parts:
        for label, count, size in (("112KiB", args.small, 112 * KiB), ("16KiB", args.tiny, 16 * KiB)):
            rels = make_tree(www / f"set-{label}-{count}", count, size)
            sets[label] = (f"set-{label}-{count}", rels, size)
            figures += [
                harness.Figure(f"{label} cold", "files/s", digits=0),
                harness.Figure(f"{label} warm", "files/s", digits=0),
                harness.Figure(f"{label} first batch", "s", lower_is_better=True, digits=3),
                harness.Figure(f"{label} origin requests/file", "req", lower_is_better=True),
                harness.Figure(f"{label} listing requests", "req", lower_is_better=True, digits=0),
                harness.Figure(f"{label} mount CPU/file", "µs", lower_is_better=True, digits=0),
            ]
    parquet = www / "pq" / f"t-{args.parquet_mib}.parquet"
    if "c" in parts:
        parquet.parent.mkdir(parents=True, exist_ok=True)
        make_parquet(parquet, args.parquet_mib)
        figures.append(harness.Figure("parquet origin MB", "MB", lower_is_better=True))
    listing = f"list-{args.entries}"
    if "d" in parts:
        make_listing_dir(www / listing, args.entries)
        figures += [
            harness.Figure("listing seconds", "s", lower_is_better=True, digits=3),
            harness.Figure("listing requests", "req", lower_is_better=True, digits=0),
            harness.Figure("S3 listing seconds", "s", lower_is_better=True, digits=3),
            harness.Figure("S3 listing requests", "req", lower_is_better=True, digits=0),
        ]
    p2p_rels: list[str] = []
    if "b" in parts:
        p2p_rels = make_tree(www / "p2p", args.p2p_files, 112 * KiB)
        figures += [
            harness.Figure("p2p peer 1 files/s", "files/s", digits=0),
            harness.Figure("p2p files/s", "files/s", digits=0),
            harness.Figure("p2p origin bytes/dataset", "x", lower_is_better=True),
            harness.Figure("p2p origin requests/file", "req", lower_is_better=True, digits=3),
            harness.Figure("p2p peers 2-4 origin requests/file", "req", lower_is_better=True, digits=3),
            harness.Figure("p2p peers 2-4 scheduler calls/file", "calls", lower_is_better=True, digits=3),
        ]
    bench = harness.Bench(
        "dataset",
        contenders=["dffs", "rclone", *([BASELINE] if args.baseline_tree else [])],
        figures=figures,
        comparisons=[
            harness.Comparison("dffs", "rclone"),
            *([harness.Comparison("dffs", BASELINE)] if args.baseline_tree else []),
        ],
        params={
            "parts": sorted(parts),
            "small": args.small,
            "tiny": args.tiny,
            "entries": args.entries,
            "parquet_mib": args.parquet_mib,
            "p2p_files": args.p2p_files,
            "origin_rate": args.origin_rate,
            "workers": WORKERS,
            "batch": BATCH,
            "smoke": args.smoke,
        },
        runs=args.runs,
    )
    state = Path(tempfile.mkdtemp(prefix="state.", dir=work))
    ctx = multiprocessing.get_context("forkserver")  # not fork: pyarrow (part c) has threads by then
    if "b" in parts:
        _cluster_key(state)
    try:
        with (
            NginxOrigin(www, workdir=work / "nginx") as origin,
            ctx.Pool(WORKERS) as pool,
            _p2p_network(parts, www, work, args.origin_rate) as (net, p2p_origin, origin_host),
            Moto(state, args.entries) if "d" in parts else _nothing() as moto,
        ):
            base = origin.base_url
            if "c" in parts:
                import pyarrow.parquet as pq

                meta = pq.ParquetFile(parquet).metadata
                chunk = meta.row_group(meta.num_row_groups // 2).column(3)
                bound = chunk.total_compressed_size + meta.serialized_size + 8 + 2 * PIECE
                print(f"parquet: chunk {chunk.total_compressed_size / 1e6:.2f} MB; bound {bound / 1e6:.2f} MB")
            for run, who in bench.schedule():
                if "a" in parts:
                    urls = {k: (f"{base}/{v[0]}/", v[1], v[2]) for k, v in sets.items()}
                    part_a(bench, origin, state, urls, run, who, pool, args.profile)
                if "c" in parts:
                    part_c(bench, origin, state, f"{base}/pq/", parquet, run, who)
                if "d" in parts:
                    part_d(bench, origin, moto, state, f"{base}/{listing}/", args.entries, run, who)
                if "b" in parts:
                    part_b(bench, net, p2p_origin, origin_host, work, state, p2p_rels, 112 * KiB, run, who, pool)
        bench.report()
    finally:
        shutil.rmtree(state, ignore_errors=True)


@contextmanager
def _nothing():
    yield None


def scheduler_calls(log: str) -> int:
    """Calls a daemon's log shows it made to its scheduler for tasks: every AnnouncePeer answer (a
    register or a reschedule: ``event=parents`` / ``back_to_source`` / ``empty``), every batched
    registration and every listing's StatTasks."""
    words = (
        "event=parents ",
        "event=back_to_source ",
        "event=finished_tasks_registered ",
        "event=swarm_listing_metadata ",
    )
    return sum(log.count(word) for word in words)


def _quiet(argv: list[str]) -> list[str]:
    """The tests' process argv without --debug (debug logs per piece would slow dffs down)."""
    return [a for a in argv if a != "--debug"]


@contextmanager
def _p2p_network(parts: set[str], www: Path, work: Path, rate: str):
    """The namespaces of part (b): origin (shaped), scheduler, seed, 4 peers; (None, None, None) without b."""
    if "b" not in parts:
        yield None, None, None
        return
    from netns import Network

    with Network(subnet="10.79.0") as net:
        origin_host = net.add_host("origin")
        for name in ("sched", "seed", "p1", "p2", "p3", "p4"):
            net.add_host(name)
        net.limit(origin_host, rate)
        with NginxOrigin(www, host=origin_host.ip, port=8080, netns=origin_host.netns, workdir=work / "nginx-p2p") as o:
            yield net, o, origin_host


def _cluster_key(state: Path) -> None:
    """Members authenticate each other (mutual TLS): one throwaway cluster key for the run."""
    from dffs.security.ca import create_cluster_key

    path = state / "cluster.key"
    create_cluster_key(path, name="dffs bench cluster")
    os.environ["DFFS_CLUSTER_KEY"] = str(path)


if __name__ == "__main__":
    main()
