#!/usr/bin/env python3
"""P2P distribution: N hosts fetch one object at once, curl from the origin vs dffs.

Hosts are network namespaces on a bridge (tests/netns.py); the origin's link is
shaped with tc tbf so it is the bottleneck, as an origin shared by many hosts is.
Both contenders run in the same run on the same topology:

  curl      every host downloads straight from the origin
  dffs      a scheduler, a seed and a daemon per host; every host runs `dffs get`

Prints wall time to the last host done, origin egress, ratios, and one JSON line.
Root only (namespaces). Usage:

  .venv/bin/python scripts/bench/p2p.py [--size-mib 256] [--hosts 5] [--origin-rate 800mbit]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the namespace and process harness the tests use
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import Daemon, Process  # noqa: E402
from common import machine, make_file  # noqa: E402
from netns import Network  # noqa: E402
from origins import NginxOrigin  # noqa: E402

PYTHON = str(REPO / ".venv/bin/python")


def run_all(procs: list[subprocess.Popen], timeout: float = 600) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(err)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--hosts", type=int, default=5)
    parser.add_argument("--origin-rate", default="800mbit", help="tc tbf rate of the origin's link")
    args = parser.parse_args()
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="dffs-bench-p2p."))
    results: dict[str, dict] = {}
    try:
        (work / "www").mkdir()
        make_file(work / "www" / "object.bin", size)
        digest = hashlib.sha256((work / "www" / "object.bin").read_bytes()).hexdigest()
        with Network(subnet="10.78.0") as net:
            peers = [net.add_host(f"p{i}") for i in range(1, args.hosts + 1)]
            origin_host, sched_host, seed_host = net.add_host("origin"), net.add_host("sched"), net.add_host("seed")
            net.limit(origin_host, args.origin_rate)
            with NginxOrigin(work / "www", host=origin_host.ip, port=8080, netns=origin_host.netns) as origin:
                url = f"http://{origin_host.ip}:8080/object.bin"

                # -- curl: every host straight from the origin
                origin.clear_log()
                started = time.perf_counter()
                run_all(
                    [
                        net.run(
                            p,
                            ["curl", "-sf", "-o", str(work / f"curl-{p.name}.bin"), url],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            text=True,
                        )
                        for p in peers
                    ]
                )
                elapsed = time.perf_counter() - started
                origin.wait_for_requests(len(peers))
                results["curl"] = {"seconds": elapsed, "origin_bytes": origin.body_bytes()}
                for p in peers:
                    (work / f"curl-{p.name}.bin").unlink()

                # -- dffs: scheduler + seed + a daemon per host
                sched = Process(
                    ["scheduler", "--listen", f"{sched_host.ip}:8002"],
                    work / "scheduler.log",
                    r"listening on",
                    prefix=sched_host.command([]),
                ).start()
                net.processes.append(sched.proc)
                daemons = []
                for host in [seed_host, *peers]:
                    d = Daemon(
                        work,
                        host.name,
                        f"{sched_host.ip}:8002",
                        ip=host.ip,
                        seed=host is seed_host,
                        prefix=host.command([]),
                    ).start()
                    net.processes.append(d.proc)
                    daemons.append(d)
                origin.clear_log()
                started = time.perf_counter()
                run_all(
                    [
                        subprocess.Popen(
                            [
                                PYTHON,
                                "-m",
                                "dffs",
                                "get",
                                url,
                                "-O",
                                str(work / f"dffs-{d.log_path.stem}.bin"),
                                "--data-dir",
                                str(d.data_dir),
                            ],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            text=True,
                        )
                        for d in daemons[1:]
                    ]
                )
                elapsed = time.perf_counter() - started
                origin.wait_for_requests(1)
                results["dffs"] = {"seconds": elapsed, "origin_bytes": origin.body_bytes()}
                for d in daemons[1:]:
                    out = work / f"dffs-{d.log_path.stem}.bin"
                    if hashlib.sha256(out.read_bytes()).hexdigest() != digest:
                        raise RuntimeError(f"{out} is corrupt")
                for d in daemons:
                    d.stop()
                sched.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for name, r in results.items():
        print(
            f"{name:5s} {r['seconds']:7.2f} s to the last host  origin egress {r['origin_bytes'] / 2**20:8.1f} MiB "
            f"({r['origin_bytes'] / size:.2f}x the object)"
        )
    c, d = results["curl"], results["dffs"]
    print(
        f"\ntime curl/dffs = {c['seconds'] / d['seconds']:.2f}x; origin egress curl/dffs = "
        f"{c['origin_bytes'] / max(1, d['origin_bytes']):.2f}x"
    )
    print(
        json.dumps(
            {
                "bench": "p2p",
                "size_bytes": size,
                "hosts": args.hosts,
                "origin_rate": args.origin_rate,
                "results": {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in results.items()},
                "machine": machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
