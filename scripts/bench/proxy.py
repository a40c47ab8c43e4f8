#!/usr/bin/env python3
"""Image pulls through the registry mirror: N hosts pull one image at once, with and without dffs.

Every host is a network namespace on a bridge (tests/netns.py) running its own
containerd; the registry is Debian's docker-registry in its own namespace, its
link shaped with tc tbf so it is the bottleneck, as a registry shared by many
hosts is. The image (built offline: busybox-static, a message, and one random
layer of --payload-mib) is pushed once, before the first run. Both contenders
run in every run on the same topology, the order alternating:

  mirror    a scheduler, a seed and a dffs daemon per host; every containerd's
            hosts.toml names its daemon's proxy (127.0.0.1:4001) as the mirror
  direct    every containerd pulls straight from the registry

Both are cold in every run: every host gets a fresh containerd (empty content
store and snapshots), and for the mirror the scheduler, the seed and every
daemon are started afresh with empty data dirs — no run inherits a blob from
the one before. The registry's blob files are in its page cache for both (read
just before, untimed). Starting containerd and the daemons is not timed, for
either side. Time is wall time from starting every host's `ctr images pull` at
once to the last one done (unpack included); egress is the body bytes of every
GET in the registry's access log. After each pull every host runs the image
and checks what it prints (untimed).

Prints the harness's table, ratios and one JSON line. Root only (namespaces).
Usage:

  .venv/bin/python scripts/bench/proxy.py [--hosts 4] [--payload-mib 128] [--registry-rate 800mbit] [--runs 3] [--smoke]
"""

from __future__ import annotations

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
from common import MiB, start_dffs_cluster, warm_page_cache  # noqa: E402
from containerd import Containerd, write_hosts_toml  # noqa: E402
from netns import Host, Network  # noqa: E402
from registry import Registry, build_busybox_image  # noqa: E402

DAEMON_CONFIG = "announce_interval = 1\nparent_wait = 5\n"


def pull_all(instances: list[Containerd], ref: str, hosts_dir: Path, timeout: float = 600) -> float:
    """Start every pull at once; seconds until the last one is done."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            c.command(["ctr", "--address", c.address, "images", "pull", "--hosts-dir", str(hosts_dir), ref]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in instances
    ]
    failures = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            failures.append(f"pull failed: {(err or out).strip()[-1000:]}")
    if failures:
        raise RuntimeError("\n".join(failures))
    return time.perf_counter() - started


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--hosts", type=int, help="pulling hosts (default 4; --smoke: 1)")
    p.add_argument("--payload-mib", type=int, help="size of the image's random layer (default 128; --smoke: 1)")
    p.add_argument("--registry-rate", default="800mbit", help="tc tbf rate of the registry's link")
    p.add_argument("--workdir", default=None, help="where the run's temp dir goes (default: the system's)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs) and print its path")
    args = harness.parse(p, hosts=(4, 1), payload_mib=(128, 1))
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dffs-proxy.", dir=args.workdir))
    bench = harness.Bench(
        "proxy",
        contenders=["mirror", "direct"],
        figures=[
            harness.Figure("time to the last pull", "s", lower_is_better=True),
            harness.Figure("registry egress", "MiB", lower_is_better=True, digits=1),
        ],
        comparisons=[harness.Comparison("mirror", "direct")],
        params={
            "hosts": args.hosts,
            "payload_bytes": args.payload_mib * MiB,
            "registry_rate": args.registry_rate,
            "smoke": args.smoke,
        },
        runs=args.runs,
    )
    try:
        with Network(subnet="10.80.0") as net, ExitStack() as stack:
            reg_host, sched_host, seed_host = net.add_host("registry"), net.add_host("sched"), net.add_host("seed")
            hosts = [net.add_host(f"h{i}") for i in range(1, args.hosts + 1)]
            registry = Registry(work / "registry", host=reg_host.ip, port=5000, netns_host=reg_host)
            stack.callback(registry.close)
            registry.start()
            image = build_busybox_image(registry, "bench/image", "v1", layers=3, payload_bytes=args.payload_mib * MiB)
            image_bytes = sum(image.sizes.values())
            bench.params["image_bytes"] = image_bytes
            net.limit(reg_host, args.registry_rate)
            hosts_dirs = {
                "direct": write_hosts_toml(work / "hosts-direct", registry.address, None),
                "mirror": write_hosts_toml(work / "hosts-mirror", registry.address, "http://127.0.0.1:4001"),
            }
            config = work / "daemon.toml"
            config.write_text(DAEMON_CONFIG)

            def daemon_flags(h: Host) -> list[str]:
                mirror = ["--registry-mirror", registry.url, "--proxy-port", "4001"]
                return ["--config", str(config), *(mirror if h is not seed_host else [])]

            for run_number, who in bench.schedule():
                with ExitStack() as run_stack:  # this run's daemons and containerds, stopped in reverse
                    if who == "mirror":
                        start_dffs_cluster(run_stack, net, work, sched_host, seed_host, hosts, daemon_flags)
                    instances = []
                    for h in hosts:
                        c = Containerd(work / f"ctd-{who}-{run_number}-{h.name}", netns_host=h)
                        run_stack.callback(c.close)
                        instances.append(c.start())
                    for blob in (work / "registry" / "storage").rglob("*"):
                        if blob.is_file():
                            warm_page_cache(blob)
                    mark = len(registry.accesses())
                    seconds = pull_all(instances, image.ref, hosts_dirs[who])
                    egress = sum(a.bytes for a in registry.accesses()[mark:] if a.method == "GET")
                    for c in instances:
                        out = c.run(image.ref, f"check-{who}-{run_number}")
                        if image.message not in out:
                            raise RuntimeError(f"the image printed {out!r}")
                bench.record(run_number, who, {"time to the last pull": seconds, "registry egress": egress / MiB})
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    bench.report()


if __name__ == "__main__":
    main()
