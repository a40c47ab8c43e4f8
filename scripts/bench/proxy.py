#!/usr/bin/env python3
"""Image pulls through the registry mirror: N hosts pull one image at once, with and without dffs.

Every host is a network namespace on a bridge (tests/netns.py) running its own
containerd; the registry is Debian's docker-registry in its own namespace, its
link shaped with tc tbf so it is the bottleneck, as a registry shared by many
hosts is. The image (built offline: busybox-static, a message, and one random
layer of --payload-mib) is pushed once. Both contenders run in the same run on
the same topology, each host with a fresh containerd:

  direct    every containerd pulls straight from the registry
  mirror    a scheduler, a seed and a dffs daemon per host; every containerd's
            hosts.toml names its daemon's proxy (127.0.0.1:4001) as the mirror

Prints the wall time to the last pull done (``ctr images pull``, unpack
included), the registry's egress (body bytes of every GET in its access log),
ratios, and one JSON line. Root only (namespaces). Usage:

  .venv/bin/python scripts/bench/proxy.py [--hosts 4] [--payload-mib 128] [--registry-rate 800mbit]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the namespace, registry and containerd harness the tests use
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import Daemon, Process  # noqa: E402
from common import machine  # noqa: E402
from containerd import Containerd, write_hosts_toml  # noqa: E402
from netns import Network  # noqa: E402
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
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"pull failed: {err or out}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--payload-mib", type=int, default=128, help="size of the image's random layer")
    parser.add_argument("--registry-rate", default="800mbit", help="tc tbf rate of the registry's link")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) and print its path")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dffs-bench-proxy."))
    results: dict[str, dict] = {}
    started: list = []
    try:
        with Network(subnet="10.80.0") as net:
            reg_host, sched_host, seed_host = net.add_host("registry"), net.add_host("sched"), net.add_host("seed")
            hosts = [net.add_host(f"h{i}") for i in range(1, args.hosts + 1)]
            registry = Registry(work / "registry", host=reg_host.ip, port=5000, netns_host=reg_host)
            started.append(registry)
            registry.start()
            image = build_busybox_image(registry, "bench/image", "v1", layers=3, payload_bytes=args.payload_mib << 20)
            image_bytes = sum(image.sizes.values())
            net.limit(reg_host, args.registry_rate)

            def egress_since(mark: int) -> int:
                return sum(a.bytes for a in registry.accesses()[mark:] if a.method == "GET")

            def run_check(instances: list[Containerd], tag: str) -> None:
                for c in instances:
                    out = c.run(image.ref, f"check-{tag}")
                    if image.message not in out:
                        raise RuntimeError(f"the image printed {out!r}")

            # -- direct: every containerd pulls from the registry
            direct_dir = write_hosts_toml(work / "hosts-direct", registry.address, None)
            instances = []
            for h in hosts:
                c = Containerd(work / f"ctd-direct-{h.name}", netns_host=h)
                started.append(c)
                instances.append(c.start())
            mark = len(registry.accesses())
            seconds = pull_all(instances, image.ref, direct_dir)
            results["direct"] = {"seconds": seconds, "registry_bytes": egress_since(mark)}
            run_check(instances, "direct")
            for c in instances:
                c.close()

            # -- mirror: scheduler + seed + a dffs daemon per host, containerd through 127.0.0.1:4001
            sched = Process(
                ["scheduler", "--listen", f"{sched_host.ip}:8002"],
                work / "scheduler.log",
                r"listening on",
                prefix=sched_host.command([]),
            ).start()
            started.append(sched)
            net.processes.append(sched.proc)
            config = work / "daemon.toml"
            config.write_text(DAEMON_CONFIG)
            for h in [seed_host, *hosts]:
                extra = ["--config", str(config)]
                if h is not seed_host:
                    extra += ["--registry-mirror", registry.url, "--proxy-port", "4001"]
                d = Daemon(
                    work,
                    h.name,
                    f"{sched_host.ip}:8002",
                    ip=h.ip,
                    seed=h is seed_host,
                    prefix=h.command([]),
                    extra=tuple(extra),
                )
                started.append(d.start())
                net.processes.append(d.proc)
            mirror_dir = write_hosts_toml(work / "hosts-mirror", registry.address, "http://127.0.0.1:4001")
            instances = []
            for h in hosts:
                c = Containerd(work / f"ctd-mirror-{h.name}", netns_host=h)
                started.append(c)
                instances.append(c.start())
            mark = len(registry.accesses())
            seconds = pull_all(instances, image.ref, mirror_dir)
            results["mirror"] = {"seconds": seconds, "registry_bytes": egress_since(mark)}
            run_check(instances, "mirror")
            for item in reversed(started):
                item.close() if isinstance(item, (Containerd, Registry)) else item.stop()
            started.clear()
    finally:
        for item in reversed(started):
            try:
                item.close() if isinstance(item, (Containerd, Registry)) else item.stop()
            except Exception:
                pass
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    for name, r in results.items():
        print(
            f"{name:6s} {r['seconds']:7.2f} s to the last pull  "
            f"registry egress {r['registry_bytes'] / 2**20:8.1f} MiB "
            f"({r['registry_bytes'] / image_bytes:.2f}x the image)"
        )
    d, m = results["direct"], results["mirror"]
    print(
        f"\ntime direct/mirror = {d['seconds'] / m['seconds']:.2f}x; registry egress direct/mirror = "
        f"{d['registry_bytes'] / max(1, m['registry_bytes']):.2f}x"
    )
    print(
        json.dumps(
            {
                "bench": "proxy",
                "hosts": args.hosts,
                "image_bytes": image_bytes,
                "registry_rate": args.registry_rate,
                "results": {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in results.items()},
                "machine": machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
