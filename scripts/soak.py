#!/usr/bin/env python3
"""Soak: a mixed load on a small cluster for a given time, with deliberate faults.

Topology: network namespaces on a bridge (tests/netns.py), one host each for an
nginx origin, a docker-registry, a scheduler, a seed and three daemons with FUSE
mounts (p1, p2, p3). Namespaces rather than loopback because the faults are
about hosts: every member has its own address, parents are reached over a real
link, and a killed parent is a host gone, not a port on 127.0.0.1 that the
loopback rules of the security layer treat specially.

Load, all at once, for --duration seconds:

  seq readers     read a whole file through a daemon's mount, sha256 against the origin file's
  random readers  pread random ranges through a mount, compared with the origin file's bytes
  dffs get        `dffs get URL -O FILE --data-dir DAEMON`, sha256 checked
  image pulls     manifest + every blob through a daemon's registry mirror (its proxy), each
                  blob's sha256 checked against its digest
  GC at quota     the daemons' --storage-quota is below the working set (files + image blobs)

Faults: the scheduler is killed (SIGKILL) and restarted every --scheduler-every
seconds; one parent daemon (--kill, default p3) is killed and restarted with its
data dir every --kill-every seconds (--smoke: both about every 30 s). Errors of
operations that ran on the killed daemon while it was down (its mount, socket or
proxy) are expected and counted apart; every other error is unexplained.

Every --sample seconds the RSS and open descriptors of every dffs process are
read from /proc; after --warmup seconds of each process's life the least-squares
slope is reported (KiB/min, fds/min). The report (also DIR/report.json, samples
in DIR/samples.jsonl, logs in DIR/logs) ends with one JSON line. Exit status 1
if a byte was wrong, an error was unexplained, an operation hung, or a process
that was not killed on purpose died.

Root only (namespaces, FUSE). Usage:

  .venv/bin/python scripts/soak.py --duration 3600 [--out DIR] [--smoke]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]  # the tests' real parts: namespaces, origins, processes
from cluster import Daemon, Process  # noqa: E402
from netns import Host, Network  # noqa: E402
from origins import NginxOrigin, write_random_file  # noqa: E402
from registry import MANIFEST_TYPES, Registry, build_busybox_image  # noqa: E402

DFFS = [sys.executable, "-m", "dffs"]
KiB, MiB = 1 << 10, 1 << 20
#: An operation that takes longer than this is a hang (generous: a cold 40 MiB read on a busy machine takes seconds).
HANG_SECONDS = 180.0
#: How long after a killed member is back its clients' errors are still blamed on the kill.
GRACE_SECONDS = 5.0


# ----------------------------------------------------------------- pure parts


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, in value per minute; None under 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by the nearest-rank rule; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


@attrs.frozen
class Window:
    """A deliberate fault: ``target`` (a member's name) was down from ``start`` to ``end``."""

    target: str
    start: float
    end: float


def excused(target: str, started: float, ended: float, windows: Sequence[Window], grace: float) -> bool:
    """Whether an operation on ``target`` overlapped a deliberate fault of that same member."""
    return any(w.target == target and started <= w.end + grace and ended >= w.start for w in windows)


# ----------------------------------------------------------------- accounting


@attrs.define
class Stats:
    """Everything the workers and the chaos thread report, behind one lock."""

    lock: threading.Lock = attrs.field(factory=threading.Lock)
    bytes_checked: int = 0
    wrong_bytes: int = 0
    ops: Counter = attrs.field(factory=Counter)
    errors: list[dict] = attrs.field(factory=list)
    latencies: list[float] = attrs.field(factory=list)
    windows: list[Window] = attrs.field(factory=list)
    faults: Counter = attrs.field(factory=Counter)
    in_flight: dict[int, tuple[str, str, float]] = attrs.field(factory=dict)
    hangs: list[dict] = attrs.field(factory=list)
    started: float = attrs.field(factory=time.monotonic)

    def checked(self, n: int, wrong: int = 0) -> None:
        with self.lock:
            self.bytes_checked += n
            self.wrong_bytes += wrong

    def latency(self, seconds: float) -> None:
        with self.lock:
            self.latencies.append(seconds)

    def error(self, kind: str, target: str, started: float, detail: str) -> None:
        with self.lock:
            self.errors.append(
                {"kind": kind, "target": target, "started": started, "ended": time.monotonic(), "detail": detail[-400:]}
            )

    @contextmanager
    def op(self, kind: str, target: str) -> Iterator[None]:
        token = threading.get_ident()
        with self.lock:
            self.in_flight[token] = (kind, target, time.monotonic())
            self.ops[kind] += 1
        try:
            yield
        finally:
            with self.lock:
                del self.in_flight[token]


# ----------------------------------------------------------------- the cluster


@attrs.define
class Member:
    """A dffs process the soak keeps running: ``make()`` builds a fresh (unstarted) Process."""

    name: str
    host: Host
    make: Callable[[int], Process]
    proc: Process | None = None
    incarnation: int = 0
    down: threading.Event = attrs.field(factory=threading.Event)
    #: Every pid it ran as, with when it started: samples are grouped by these.
    pids: list[tuple[int, int]] = attrs.field(factory=list)

    def start(self, net: Network) -> None:
        self.incarnation += 1
        self.proc = self.make(self.incarnation).start(timeout=60)
        net.processes.append(self.proc.proc)
        self.pids.append((self.incarnation, self.proc.proc.pid))

    def kill(self) -> None:
        assert self.proc is not None and self.proc.proc is not None
        self.proc.proc.kill()
        self.proc.proc.wait()
        self.proc.stop()  # closes its pipes; a daemon's dead mount is cleared

    @property
    def daemon(self) -> Daemon:
        assert isinstance(self.proc, Daemon)
        return self.proc


@attrs.frozen
class OriginFile:
    name: str
    path: Path
    size: int
    sha256: str


def build_files(www: Path, smoke: bool) -> list[OriginFile]:
    """The working set: small objects, a few MiB, and files of several pieces (4 MiB each)."""
    sizes = [3 * KiB, 200 * KiB, 1 * MiB + 17, 5 * MiB + 3, 9 * MiB, 14 * MiB + 5]
    if not smoke:
        sizes += [24 * MiB + 1, 33 * MiB]
    files = []
    for index, size in enumerate(sizes):
        path = www / f"f{index}.bin"
        files.append(OriginFile(path.name, path, size, write_random_file(path, size, seed=1000 + index)))
    return files


# ----------------------------------------------------------------- the load


class Load:
    """The workers: each loops until ``stop`` is set, picking a daemon that is not down."""

    def __init__(
        self,
        stats: Stats,
        stop: threading.Event,
        daemons: list[Member],
        files: list[OriginFile],
        origin: NginxOrigin,
        images: list[Any],
        work: Path,
        pause: float,
    ):
        self.stats, self.stop, self.daemons, self.files = stats, stop, daemons, files
        self.origin, self.images, self.work, self.pause = origin, images, work, pause
        self.serial = itertools.count()

    def _pick(self, rng: random.Random) -> Member | None:
        up = [d for d in self.daemons if not d.down.is_set()]
        return rng.choice(up) if up else None

    def loop(self, name: str, step: Callable[[random.Random, Member], None], seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            member = self._pick(rng)
            if member is None:
                self.stop.wait(0.2)
                continue
            started = time.monotonic()
            try:
                with self.stats.op(name, member.name):
                    step(rng, member)
            except Exception as exc:  # every failure is counted by kind, none ends the soak
                self.stats.error(f"{name}:{_kind(exc)}", member.name, started, f"{type(exc).__name__}: {exc}")
            self.stop.wait(self.pause * rng.uniform(0.5, 1.5))

    def mount_path(self, member: Member, f: OriginFile) -> Path:
        return member.daemon.path(f"/{f.name}", self.origin)

    def seq_read(self, rng: random.Random, member: Member) -> None:
        """The whole file in 1 MiB reads, each compared with the origin file's bytes at that offset."""
        f = rng.choice(self.files)
        offset = 0
        with open(self.mount_path(member, f), "rb", buffering=0) as src, open(f.path, "rb") as truth:
            while True:
                t = time.monotonic()
                chunk = src.read(1 * MiB)
                self.stats.latency(time.monotonic() - t)
                if not chunk:
                    break
                self._compare(chunk, truth.read(len(chunk)), f, offset, member)
                offset += len(chunk)
        if offset != f.size:
            raise ShortRead(f"{f.name} through {member.name}'s mount ended at {offset} of {f.size} bytes")

    def random_read(self, rng: random.Random, member: Member) -> None:
        """Random ranges, read to the end as applications do (a read may return fewer bytes than
        asked: the kernel hands over what it had when the next part fails)."""
        f = rng.choice(self.files)
        fd = os.open(self.mount_path(member, f), os.O_RDONLY)
        try:
            with open(f.path, "rb") as truth:
                for _ in range(8):
                    length = rng.choice([4 * KiB, 64 * KiB, 256 * KiB])
                    offset = rng.randrange(0, max(1, f.size - 1))
                    want = min(length, f.size - offset)
                    got = b""
                    while len(got) < want:
                        t = time.monotonic()
                        part = os.pread(fd, want - len(got), offset + len(got))
                        self.stats.latency(time.monotonic() - t)
                        if not part:
                            raise ShortRead(f"{f.name} through {member.name}: end of file at {offset + len(got)}")
                        got += part
                    truth.seek(offset)
                    self._compare(got, truth.read(want), f, offset, member)
        finally:
            os.close(fd)

    def _compare(self, got: bytes, want: bytes, f: OriginFile, offset: int, member: Member) -> None:
        wrong = _wrong(got, want)
        self.stats.checked(len(want), wrong)
        if wrong:
            raise WrongBytes(f"{f.name}[{offset}:+{len(want)}] through {member.name}: {wrong} wrong bytes")

    def get(self, rng: random.Random, member: Member) -> None:
        f = rng.choice(self.files)
        out = self.work / f"get-{next(self.serial)}.out"
        try:
            result = subprocess.run(
                [
                    *DFFS,
                    "get",
                    self.origin.url(f.name),
                    "-O",
                    str(out),
                    "--data-dir",
                    str(member.daemon.data_dir),
                    "-q",
                    "--timeout",
                    str(HANG_SECONDS - 10),
                ],
                capture_output=True,
                text=True,
                timeout=HANG_SECONDS,
            )
            if result.returncode != 0:
                raise CommandFailed(f"dffs get exited {result.returncode}: {result.stderr.strip()[-300:]}")
            digest = _sha256(out)
            self.stats.checked(f.size)
            if digest != f.sha256:
                self.stats.checked(0, wrong=f.size)
                raise WrongBytes(f"dffs get of {f.name} through {member.name}: wrong sha256")
        finally:
            out.unlink(missing_ok=True)

    def pull(self, rng: random.Random, member: Member) -> None:
        """An image pull through the daemon's registry mirror, as containerd's hosts.toml makes it:
        origin-form requests to the proxy on the daemon's host (curl in its namespace)."""
        image = rng.choice(self.images)
        base = "http://127.0.0.1:4001/v2"
        manifest = self._curl(member, [f"{base}/{image.repo}/manifests/{image.tag}", "-H", f"Accept: {MANIFEST_TYPES}"])
        try:
            doc = json.loads(manifest.read_bytes())
            if "sha256:" + _sha256(manifest) != image.manifest_digest:
                raise WrongBytes(
                    f"manifest of {image.ref} through {member.name}'s mirror is not {image.manifest_digest}"
                )
        finally:
            manifest.unlink(missing_ok=True)
            manifest.with_suffix(".head").unlink(missing_ok=True)
        for blob in [doc["config"], *doc["layers"]]:
            path = self._curl(member, [f"{base}/{image.repo}/blobs/{blob['digest']}"])
            try:
                self.stats.checked(blob["size"])
                if "sha256:" + _sha256(path) != blob["digest"]:
                    self.stats.checked(0, wrong=blob["size"])
                    kept = self._keep(path, f"{member.name}-{blob['digest'][7:19]}")
                    raise WrongBytes(
                        f"blob {blob['digest'][:19]} through {member.name}'s mirror: wrong sha256 "
                        f"({path.stat().st_size if path.exists() else '?'} of {blob['size']} bytes; kept in {kept})"
                    )
            finally:
                path.unlink(missing_ok=True)
                path.with_suffix(".head").unlink(missing_ok=True)

    def _keep(self, path: Path, name: str) -> Path:
        """A wrong answer and its response head, for whoever looks into it."""
        keep = self.work.parent / "wrong" / f"{name}-{next(self.serial)}"
        keep.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, keep)
        head = path.with_suffix(".head")
        if head.exists():
            shutil.copyfile(head, keep.with_suffix(".head"))
        return keep

    def _curl(self, member: Member, args: list[str]) -> Path:
        out = self.work / f"pull-{next(self.serial)}.out"
        head = out.with_suffix(".head")
        result = subprocess.run(
            member.host.command(
                ["curl", "-sS", "-f", "-D", str(head), "-o", str(out), "--max-time", str(HANG_SECONDS - 10), *args]
            ),
            capture_output=True,
            text=True,
            timeout=HANG_SECONDS,
        )
        if result.returncode != 0:
            out.unlink(missing_ok=True)
            head.unlink(missing_ok=True)
            raise CommandFailed(f"curl exited {result.returncode}: {result.stderr.strip()[-300:]}")
        return out


class WrongBytes(Exception):
    pass


class CommandFailed(Exception):
    pass


class ShortRead(Exception):
    """A file through the mount ended before its size: an error, not a wrong byte."""


def _kind(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        import errno

        return errno.errorcode.get(exc.errno, str(exc.errno))
    if isinstance(exc, subprocess.TimeoutExpired):
        return "hang"
    return type(exc).__name__


def _wrong(got: bytes, want: bytes) -> int:
    if got == want:
        return 0
    return sum(a != b for a, b in zip(got, want, strict=False)) + abs(len(got) - len(want))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------- faults and sampling


def chaos(
    stats: Stats,
    stop: threading.Event,
    net: Network,
    scheduler: Member,
    victims: list[Member],
    scheduler_every: float,
    kill_every: float,
) -> None:
    """Kill and restart the scheduler and the victims on their timers (0: never)."""
    next_sched = time.monotonic() + scheduler_every if scheduler_every else float("inf")
    next_kill = time.monotonic() + kill_every if kill_every else float("inf")
    turn = itertools.cycle(victims) if victims else None
    while not stop.wait(0.5):
        now = time.monotonic()
        if now >= next_sched:
            _restart(stats, net, scheduler, drain=False)
            next_sched = time.monotonic() + scheduler_every
        if turn is not None and now >= next_kill:
            _restart(stats, net, next(turn), drain=True)
            next_kill = time.monotonic() + kill_every


def _restart(stats: Stats, net: Network, member: Member, *, drain: bool) -> None:
    start = time.monotonic()
    member.down.set()
    if drain:  # a `dffs get` whose daemon does not answer runs an embedded one on the data dir: let them finish
        deadline = start + HANG_SECONDS
        while time.monotonic() < deadline:
            with stats.lock:
                busy = any(k == "get" and t == member.name for k, t, _ in stats.in_flight.values())
            if not busy:
                break
            time.sleep(0.1)
    try:
        member.kill()
        member.start(net)
        with stats.lock:
            stats.faults[f"{member.name}_killed_and_restarted"] += 1
    except Exception as exc:  # a member that does not come back is a finding, reported below
        stats.error("restart_failed", member.name, start, f"{type(exc).__name__}: {exc}")
    finally:
        with stats.lock:
            stats.windows.append(Window(member.name, start, time.monotonic()))
        member.down.clear()


def _proc_figures(pid: int) -> tuple[int, int] | None:
    """(RSS KiB, open descriptors) of a live process, None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration, ValueError):
        return None


def sampler(stats: Stats, stop: threading.Event, members: list[Member], every: float, out: Path) -> None:
    with open(out, "a") as log:
        while True:
            now = time.monotonic()
            for m in members:
                if m.proc is None or m.proc.proc is None or m.down.is_set():
                    continue
                figures = _proc_figures(m.proc.proc.pid)
                if figures:
                    row = {
                        "t": round(now - stats.started, 2),
                        "name": m.name,
                        "incarnation": m.incarnation,
                        "pid": m.proc.proc.pid,
                        "rss_kib": figures[0],
                        "fds": figures[1],
                    }
                    log.write(json.dumps(row) + "\n")
            log.flush()
            _check_hangs(stats)
            if stop.wait(every):
                return


def _check_hangs(stats: Stats) -> None:
    now = time.monotonic()
    with stats.lock:
        for token, (kind, target, started) in stats.in_flight.items():
            if now - started > HANG_SECONDS and not any(
                h["token"] == token and h["started"] == started for h in stats.hangs
            ):
                stats.hangs.append({"token": token, "kind": kind, "target": target, "started": started})


# ----------------------------------------------------------------- report


def summarize(
    stats: Stats,
    samples_path: Path,
    members: list[Member],
    warmup: float,
    args: argparse.Namespace,
    elapsed: float,
    setup: dict,
) -> dict:
    series: dict[tuple[str, int], list[dict]] = {}
    for line in samples_path.read_text().splitlines():
        row = json.loads(line)
        series.setdefault((row["name"], row["incarnation"]), []).append(row)
    processes = []
    for (name, incarnation), rows in sorted(series.items()):
        first = rows[0]["t"]
        settled = [r for r in rows if r["t"] - first >= warmup]
        processes.append(
            {
                "name": name,
                "incarnation": incarnation,
                "pid": rows[0]["pid"],
                "lived_s": round(rows[-1]["t"] - first, 1),
                "samples": len(rows),
                "rss_kib_first": rows[0]["rss_kib"],
                "rss_kib_last": rows[-1]["rss_kib"],
                "rss_kib_max": max(r["rss_kib"] for r in rows),
                "fds_first": rows[0]["fds"],
                "fds_last": rows[-1]["fds"],
                "fds_max": max(r["fds"] for r in rows),
                "rss_kib_per_min": _round(slope_per_minute([(r["t"], r["rss_kib"]) for r in settled])),
                "fds_per_min": _round(slope_per_minute([(r["t"], r["fds"]) for r in settled])),
            }
        )
    expected, unexplained = Counter(), Counter()
    unexplained_samples = []
    for e in stats.errors:
        if excused(e["target"], e["started"], e["ended"], stats.windows, GRACE_SECONDS):
            expected[e["kind"]] += 1
        else:
            unexplained[e["kind"]] += 1
            if len(unexplained_samples) < 20:
                unexplained_samples.append(
                    {
                        **e,
                        "started": round(e["started"] - stats.started, 1),
                        "ended": round(e["ended"] - stats.started, 1),
                    }
                )
    alive = {m.name: bool(m.proc and m.proc.alive()) for m in members}
    p99 = percentile(stats.latencies, 0.99)
    p50 = percentile(stats.latencies, 0.5)
    return {
        "soak": "dffs",
        "duration_s": round(elapsed, 1),
        "smoke": args.smoke,
        "setup": setup,
        "operations": dict(stats.ops),
        "bytes_checked": stats.bytes_checked,
        "wrong_bytes": stats.wrong_bytes,
        "faults": dict(stats.faults),
        "errors_expected": dict(expected),
        "errors_unexplained": dict(unexplained),
        "unexplained_examples": unexplained_samples,
        "hangs": len(stats.hangs),
        "read_latency_ms": {"reads": len(stats.latencies), "p50": _ms(p50), "p99": _ms(p99)},
        "alive_at_end": alive,
        "warmup_s": warmup,
        "processes": processes,
    }


def gc_figures(logs: Path) -> dict[str, int]:
    """What the daemons' GC evicted (their event lines), so a report shows the quota was reached."""
    figures: Counter = Counter()
    for log in logs.glob("*.log"):
        text = log.read_text(errors="replace")
        figures["evict_pieces_events"] += text.count("event=gc_evict_pieces")
        figures["evict_task_events"] += text.count("event=gc_evict_task")
    return dict(figures)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def print_report(report: dict) -> None:
    print(f"soak {report['duration_s']} s  operations {report['operations']}")
    print(f"bytes checked {report['bytes_checked']:,}  wrong bytes {report['wrong_bytes']}  hangs {report['hangs']}")
    print(f"faults {report['faults']}")
    print(f"origin sent {report['origin_bytes']:,} B, registry {report['registry_bytes']:,} B; GC {report['gc']}")
    print(f"errors expected (during a deliberate kill) {report['errors_expected']}")
    print(f"errors unexplained {report['errors_unexplained']}")
    for e in report["unexplained_examples"]:
        print(f"  {e['kind']} on {e['target']} at {e['started']} s: {e['detail']}")
    lat = report["read_latency_ms"]
    print(f"mount reads {lat['reads']}  p50 {lat['p50']} ms  p99 {lat['p99']} ms")
    print(
        f"{'process':<14}{'lived s':>9}{'RSS MiB first/last/max':>26}{'KiB/min':>10}{'fds f/l/max':>14}{'fds/min':>9}"
    )
    for p in report["processes"]:
        rss = f"{p['rss_kib_first'] / 1024:.0f}/{p['rss_kib_last'] / 1024:.0f}/{p['rss_kib_max'] / 1024:.0f}"
        fds = f"{p['fds_first']}/{p['fds_last']}/{p['fds_max']}"
        print(
            f"{p['name'] + '#' + str(p['incarnation']):<14}{p['lived_s']:>9}{rss:>26}"
            f"{_fmt(p['rss_kib_per_min']):>10}{fds:>14}{_fmt(p['fds_per_min']):>9}"
        )
    print(f"alive at the end {report['alive_at_end']}")
    print(json.dumps(report, separators=(",", ":")))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def failed(report: dict) -> list[str]:
    why = []
    if report["wrong_bytes"]:
        why.append(f"{report['wrong_bytes']} wrong bytes")
    if report["errors_unexplained"]:
        why.append(f"unexplained errors {report['errors_unexplained']}")
    if report["hangs"]:
        why.append(f"{report['hangs']} hung operations")
    if dead := [name for name, up in report["alive_at_end"].items() if not up]:
        why.append(f"not alive at the end: {dead}")
    if not report["bytes_checked"]:
        why.append("no byte was checked")
    return why


# ----------------------------------------------------------------- main


def use_cluster_key(work: Path) -> None:
    """Members authenticate with a cluster key as in production: $DFFS_CLUSTER_KEY, else a new one."""
    if os.environ.get("DFFS_CLUSTER_KEY"):
        return
    key = work / "cluster.key"
    subprocess.run([*DFFS, "cluster", "init", str(key)], check=True, capture_output=True)
    os.environ["DFFS_CLUSTER_KEY"] = str(key)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, required=True, help="seconds of load")
    p.add_argument("--out", type=Path, help="report, samples and logs (default: a new temp dir)")
    p.add_argument("--smoke", action="store_true", help="small files, faults every ~30 s, debug logs")
    p.add_argument("--scheduler-every", type=float, help="seconds between scheduler restarts (default 300; smoke 30)")
    p.add_argument("--kill-every", type=float, help="seconds between parent kills (default 240; smoke 35)")
    p.add_argument("--kill", default="p3", help="daemons killed in turn, comma-separated (default p3)")
    p.add_argument("--sample", type=float, help="seconds between /proc samples (default 10; smoke 2)")
    p.add_argument(
        "--warmup", type=float, help="seconds of a process's life left out of slopes (default 300; smoke 30)"
    )
    p.add_argument("--quota", default=None, help="each daemon's --storage-quota (default 48MiB; smoke 16MiB)")
    p.add_argument("--readers", type=int, default=1, help="workers of each kind (seq, random, get, pull)")
    p.add_argument("--pause", type=float, default=0.3, help="mean seconds a worker rests between operations")
    p.add_argument("--subnet", default="10.91.0", help="the namespaces' /24")
    args = p.parse_args(argv)
    smoke = args.smoke
    sched_every = args.scheduler_every if args.scheduler_every is not None else (30 if smoke else 300)
    kill_every = args.kill_every if args.kill_every is not None else (35 if smoke else 240)
    sample_every = args.sample or (2 if smoke else 10)
    warmup = args.warmup if args.warmup is not None else (30 if smoke else 300)
    quota = args.quota or ("16MiB" if smoke else "48MiB")
    out = Path(args.out or tempfile.mkdtemp(prefix="dffs-soak."))
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    work.mkdir()
    use_cluster_key(work)
    samples = out / "samples.jsonl"
    samples.write_text("")
    stats = Stats()
    stop = threading.Event()
    files = build_files(work / "www", smoke)

    with Network(subnet=args.subnet) as net, ExitStack() as stack:
        hosts = {n: net.add_host(n) for n in ["origin", "registry", "sched", "seed", "p1", "p2", "p3"]}
        origin = NginxOrigin(
            work / "www", host=hosts["origin"].ip, port=8080, netns=hosts["origin"].netns, workdir=work / "nginx"
        )
        stack.callback(origin.close)
        origin.start()
        registry = Registry(work / "registry", host=hosts["registry"].ip, port=5000, netns_host=hosts["registry"])
        stack.callback(registry.close)
        registry.start()
        payload = (1 if smoke else 6) * MiB
        images = [build_busybox_image(registry, f"soak/img{i}", "v1", layers=3, payload_bytes=payload) for i in (1, 2)]
        working_set = sum(f.size for f in files) + sum(sum(i.sizes.values()) for i in images)

        sched_addr = f"{hosts['sched'].ip}:8002"
        config = work / "daemon.toml"
        config.write_text(
            "announce_interval = 1\nparent_wait = 3\nparent_rounds = 3\ngc_interval = 5\n"
            f'storage_quota = "{quota}"\nproxy_port = 4001\nregistry_mirror = "{registry.url}"\n'
        )
        seed_config = work / "seed.toml"
        seed_config.write_text("announce_interval = 1\nparent_wait = 3\ngc_interval = 5\n")

        def scheduler(incarnation: int) -> Process:
            log = logs / f"scheduler.{incarnation}.log"
            proc = Process(
                ["scheduler", "--listen", sched_addr], log, r"listening on", prefix=hosts["sched"].command([])
            )
            return proc if smoke else _quiet(proc)

        def daemon(name: str) -> Callable[[int], Process]:
            def make(incarnation: int) -> Process:
                d = Daemon(
                    work,
                    name,
                    sched_addr,
                    ip=hosts[name].ip,
                    seed=name == "seed",
                    mount=name != "seed",
                    prefix=hosts[name].command([]),
                    extra=("--config", str(seed_config if name == "seed" else config)),
                )
                d.log_path = logs / f"{name}.{incarnation}.log"  # its own: start() waits for this one's mount line
                return d if smoke else _quiet(d)

            return make

        sched = Member("scheduler", hosts["sched"], scheduler)
        seed = Member("seed", hosts["seed"], daemon("seed"))
        peers = [Member(n, hosts[n], daemon(n)) for n in ("p1", "p2", "p3")]
        members = [sched, seed, *peers]
        for m in members:
            m.start(net)
            stack.callback(lambda m=m: m.proc and m.proc.stop())
        victims = [m for m in peers if m.name in args.kill.split(",")]

        load = Load(stats, stop, peers, files, origin, images, work, args.pause)
        threads = [
            threading.Thread(target=sampler, args=(stats, stop, members, sample_every, samples), daemon=True),
            threading.Thread(
                target=chaos, args=(stats, stop, net, sched, victims, sched_every, kill_every), daemon=True
            ),
        ]
        steps = {"seq": load.seq_read, "random": load.random_read, "get": load.get, "pull": load.pull}
        for i in range(args.readers):
            for name, step in steps.items():
                threads.append(
                    threading.Thread(
                        target=load.loop, args=(name, step, hash((name, i)) & 0xFFFF), daemon=True, name=f"{name}-{i}"
                    )
                )
        setup = {
            "hosts": list(hosts),
            "files": len(files),
            "working_set_bytes": working_set,
            "quota": quota,
            "scheduler_every_s": sched_every,
            "kill_every_s": kill_every,
            "kill": args.kill,
            "sample_every_s": sample_every,
            "workers": len(steps) * args.readers,
            "out": str(out),
        }
        print(f"soak: {json.dumps(setup)}", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # end early, still report and clean up
        began = time.monotonic()
        for t in threads:
            t.start()
        try:
            stop.wait(args.duration)
        except KeyboardInterrupt:
            pass
        stop.set()
        for t in threads:
            t.join(HANG_SECONDS + 10)
        elapsed = time.monotonic() - began
        _check_hangs(stats)
        report = summarize(stats, samples, members, warmup, args, elapsed, setup)
        origin.sync_log()
        report["origin_bytes"] = origin.body_bytes(method="GET")
        report["registry_bytes"] = registry.egress()
        report["gc"] = gc_figures(logs)
        (out / "report.json").write_text(json.dumps(report, indent=1))
        with open(out / "errors.jsonl", "w") as errors:
            for e in stats.errors:
                errors.write(
                    json.dumps({**e, "started": e["started"] - stats.started, "ended": e["ended"] - stats.started})
                    + "\n"
                )
    print_report(report)
    why = failed(report)
    if why:
        print("soak FAILED: " + "; ".join(why), file=sys.stderr)
        return 1
    return 0


def _quiet(proc: Process) -> Process:
    """An hour of --debug lines is gigabytes: keep the event lines (-v), drop debug."""
    proc.argv = [a for a in proc.argv if a != "--debug"]
    return proc


if __name__ == "__main__":
    sys.exit(main())
