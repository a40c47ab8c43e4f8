#!/usr/bin/env python3
"""P2P distribution: N hosts fetch one object at once, curl from the origin vs dffs.

Hosts are network namespaces on a bridge (tests/netns.py); the origin's link is
shaped with tc tbf so it is the bottleneck, as an origin shared by many hosts is.
Both contenders run in every run on the same topology, the order alternating:

  curl           every host runs `curl -o FILE URL` straight from the origin
  dffs           a scheduler, a seed and a daemon per host; every host runs `dffs get URL -O FILE`
                 through its daemon. Secure, as by default: mutual TLS between members from a
                 cluster key, signed piece requests, pieces checked against anchored digests
  dffs insecure  the same with every member started with `--insecure` (plain-text gRPC, unsigned
                 piece requests): what security costs is dffs / dffs insecure in the same run
                 (`--no-insecure` leaves it out)

Every contender is cold in every run: the output files are deleted before it, and for
dffs the scheduler, the seed and every daemon are started afresh with empty
data dirs (untimed) — no run inherits pieces from the one before. The origin's
copy is in its page cache for both (read just before, untimed). Time is wall
time from starting every host's download at once to the last one done; origin
egress is the body bytes in the origin's access log. Every output is compared
with the object afterwards (untimed).

Prints the harness's table, ratios and one JSON line. Root only (namespaces).
Usage:

  .venv/bin/python scripts/bench/p2p.py [--size-mib 256] [--hosts 5] [--origin-rate 800mbit] [--runs 3]
      [--no-insecure] [--smoke] [--keep-logs DIR]
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parents[1] / "tests")]  # the harness; the tests' real parts
import harness  # noqa: E402
from common import DFFS, MiB, make_file, start_dffs_cluster, wait_quiet, warm_page_cache  # noqa: E402
from netns import Network  # noqa: E402
from origins import NginxOrigin  # noqa: E402


def wait_all(procs: list[subprocess.Popen[str]], timeout: float = 600) -> None:
    """Wait for every process; fail with the first failure's stderr."""
    failures = []
    for proc in procs:
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            failures.append(f"{proc.args!r} exited with {proc.returncode}: {err.strip()[-1000:]}")
    if failures:
        raise RuntimeError("\n".join(failures))


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--size-mib", type=int, help="object size (default 256; --smoke: 8)")
    p.add_argument("--hosts", type=int, help="downloading hosts (default 5; --smoke: 2)")
    p.add_argument("--origin-rate", default="800mbit", help="tc tbf rate of the origin's link")
    p.add_argument("--workdir", default=None, help="where the run's temp dir goes (default: the system's)")
    p.add_argument(
        "--keep-logs",
        metavar="DIR",
        help="copy each dffs run's scheduler and daemon logs to DIR/run-N (what the simulator's model is checked on)",
    )
    p.add_argument(
        "--no-insecure", dest="insecure", action="store_false", help="leave out the `dffs insecure` contender"
    )
    args = harness.parse(p, size_mib=(256, 8), hosts=(5, 2))
    size = args.size_mib * MiB
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dffs-p2p.", dir=args.workdir))
    bench = harness.Bench(
        "p2p",
        contenders=["dffs", *(["dffs insecure"] if args.insecure else []), "curl"],
        figures=[
            harness.Figure("time to the last host", "s", lower_is_better=True),
            harness.Figure("origin egress", "MiB", lower_is_better=True, digits=1),
        ],
        comparisons=[
            harness.Comparison("dffs", "curl"),
            *(
                [harness.Comparison("dffs", "dffs insecure"), harness.Comparison("dffs insecure", "curl")]
                if args.insecure
                else []
            ),
        ],
        params={
            "size_bytes": size,
            "hosts": args.hosts,
            "origin_rate": args.origin_rate,
            "insecure_contender": args.insecure,
            "smoke": args.smoke,
        },
        runs=args.runs,
    )
    try:
        obj = work / "www" / "object.bin"
        make_file(obj, size)
        with Network(subnet="10.78.0") as net:
            peers = [net.add_host(f"p{i}") for i in range(1, args.hosts + 1)]
            origin_host, sched_host, seed_host = net.add_host("origin"), net.add_host("sched"), net.add_host("seed")
            net.limit(origin_host, args.origin_rate)
            origin = NginxOrigin(work / "www", host=origin_host.ip, port=8080, netns=origin_host.netns)
            with origin:
                url = origin.url("object.bin")

                def outputs(who: str) -> list[Path]:
                    return [work / f"{who.replace(' ', '-')}-{p.name}.bin" for p in peers]

                def downloads(who: str) -> list[subprocess.Popen[str]]:
                    """Every host's download, started at once: curl on the host, `dffs get`
                    handing the download to the host's daemon over its Unix socket."""
                    commands = [
                        h.command(["curl", "-sf", "-o", str(o), url])
                        if who == "curl"
                        else [*DFFS, "get", url, "-O", str(o), "--data-dir", str(work / f"{h.name}-data")]
                        for h, o in zip(peers, outputs(who), strict=True)
                    ]
                    procs = []
                    for argv in commands:
                        proc = subprocess.Popen(
                            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
                        )  # a group of its own: the network kills it at close if it is still running
                        net.processes.append(proc)
                        procs.append(proc)
                    return procs

                for run_number, who in bench.schedule():
                    for out in outputs(who):
                        out.unlink(missing_ok=True)
                    with ExitStack() as run_stack:  # this run's dffs processes, stopped in reverse
                        if who != "curl":
                            start_dffs_cluster(
                                run_stack, net, work, sched_host, seed_host, peers, insecure=who == "dffs insecure"
                            )
                        warm_page_cache(obj)
                        origin.clear_log()
                        started = time.perf_counter()
                        wait_all(downloads(who))
                        seconds = time.perf_counter() - started
                        wait_quiet(origin)
                        egress = origin.body_bytes()
                    if who == "dffs" and args.keep_logs:  # after the processes stopped: complete logs
                        kept = Path(args.keep_logs) / f"run-{run_number}"
                        kept.mkdir(parents=True, exist_ok=True)
                        for log in work.glob("*.log"):
                            shutil.copy2(log, kept / log.name)
                    for out in outputs(who):
                        if not filecmp.cmp(out, obj, shallow=False):
                            raise RuntimeError(f"{out} differs from the object")
                        out.unlink()
                    bench.record(run_number, who, {"time to the last host": seconds, "origin egress": egress / MiB})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bench.report()


if __name__ == "__main__":
    main()
