#!/usr/bin/env python3
"""Lazy image pulls: pull start to container output, dffs's snapshotter vs containerd's overlayfs pull.

Every host is a network namespace on a bridge (tests/netns.py) running its own
containerd; the registry is Debian's docker-registry in its own namespace, its
link shaped with tc tbf (--rate, 200 Mbit by default) as a registry shared by
many hosts is. The image (busybox-static, a message, and --layers random
layers of --layer-mib each; --format estargz converts it with ctr-remote) is
pushed once. Each run starts every contender from scratch (fresh daemons,
data dirs and containerds) and the contenders alternate from run to run:

  dffs       a scheduler, a seed and ``dffs daemon --snapshotter`` per host;
             ``dffs image pull`` then ``ctr run --snapshotter dffs``
  overlayfs  ``ctr images pull`` (containerd's own overlayfs snapshotter)
             then ``ctr run``, straight from the registry
  stargz     (with --stargz PATH: a stargz-snapshotter daemon binary; this
             script does not build it) ``ctr-remote images rpull`` then
             ``ctr run --snapshotter stargz``, straight from the registry

Timed per contender: host 1 alone (pull start to the container's output),
then hosts 2..N together (start to the last output), and the registry's
egress over all hosts. Prints medians with min-max, the targets (hosts 2..N at
least 5x faster than the overlayfs pull; registry egress at most 1.05x the
image), and one JSON line. Root only (namespaces). Run it under
``flock /tmp/dffs-bench.lock``. Usage:

  .venv/bin/python scripts/bench/snapshotter.py [--runs 3] [--hosts 4] [--layers 4] [--layer-mib 52]
      [--rate 200mbit|none] [--format gzip|estargz] [--stargz PATH] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the namespace, registry and containerd harness the tests use
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import Daemon, Process  # noqa: E402
from common import machine  # noqa: E402
from containerd import Containerd, proxy_snapshotter  # noqa: E402
from layer_images import convert_estargz  # noqa: E402
from netns import Network  # noqa: E402
from registry import Registry, build_busybox_image  # noqa: E402
from snapshotter_env import SnapshotterHost  # noqa: E402

DAEMON_CONFIG = "announce_interval = 1\nparent_wait = 5\nparent_rounds = 3\n[snapshotter]\nprefetch_delay = 30\n"


def _together(jobs) -> float:
    """Run the callables at once; seconds until the last is done (the first error is raised)."""
    errors: list[BaseException] = []

    def wrap(job):
        try:
            job()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(job,)) for job in jobs]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


LOST_OUTPUT = 0


def _check(out: str, message: str) -> None:
    """The container printed the message. ctr 1.6 now and then loses the output of a container that
    exits at once (for every snapshotter; the run itself succeeded): counted and reported, not fatal."""
    global LOST_OUTPUT
    if not out:
        LOST_OUTPUT += 1
        return
    if message not in out:
        raise RuntimeError(f"the container printed {out!r}, not {message!r}")


def run_dffs(work: Path, net: Network, hosts, sched_host, seed_host, registry: Registry, image, tag: str) -> dict:
    started: list = []
    try:
        sched = Process(
            ["scheduler", "--listen", f"{sched_host.ip}:8002"],
            work / f"scheduler-{tag}.log",
            r"listening on",
            prefix=sched_host.command([]),
        ).start()
        started.append(sched)
        net.processes.append(sched.proc)
        config = work / "daemon.toml"
        config.write_text(DAEMON_CONFIG)
        seed_config = work / "seed.toml"  # the seed is a plain daemon: no [snapshotter] table
        seed_config.write_text(DAEMON_CONFIG.split("[snapshotter]")[0])
        run_dir = work / tag
        run_dir.mkdir()
        seed = Daemon(
            run_dir,
            "seed",
            f"{sched_host.ip}:8002",
            ip=seed_host.ip,
            seed=True,
            prefix=seed_host.command([]),
            extra=("--config", str(seed_config), "--proxy-port", "-1", "--metrics-port", "-1"),
        )
        started.append(seed.start())
        net.processes.append(seed.proc)
        nodes = []
        for h in hosts:
            node = SnapshotterHost(
                run_dir,
                h.name,
                scheduler=f"{sched_host.ip}:8002",
                ip=h.ip,
                netns_host=h,
                extra=("--config", str(config)),
            )
            started.append(node)
            node.start()
            net.processes.append(node.daemon.proc)
            nodes.append(node)
        mark = len(registry.accesses())

        steps: list[str] = []

        def one(node: SnapshotterHost, name: str):
            def job():
                t0 = time.perf_counter()
                out = node.image_pull(image.ref).stdout
                t1 = time.perf_counter()
                _check(node.ctr("run", "--rm", "--snapshotter", "dffs", image.ref, name).stdout, image.message)
                inside = " ".join(w for w in out.split() if w.split("=")[0] in ("resolve", "documents", "layers"))
                steps.append(f"{name}: pull {t1 - t0:.2f} s ({inside}), run {time.perf_counter() - t1:.2f} s")

            return job

        first = _together([one(nodes[0], f"{tag}-1")])
        rest = _together([one(n, f"{tag}-{i + 2}") for i, n in enumerate(nodes[1:])]) if len(nodes) > 1 else 0.0
        egress = sum(a.bytes for a in registry.accesses()[mark:] if a.method == "GET")
        print("  " + "; ".join(steps), flush=True)
        return {"first_s": first, "rest_s": rest, "registry_bytes": egress}
    finally:
        for item in reversed(started):
            try:
                item.close() if isinstance(item, SnapshotterHost) else item.stop()
            except Exception:  # keep tearing down the rest
                pass


def run_overlayfs(work: Path, hosts, registry: Registry, image, tag: str) -> dict:
    instances = []
    try:
        for h in hosts:
            c = Containerd(work / tag / f"ctd-{h.name}", netns_host=h)
            instances.append(c)
            c.start()
        mark = len(registry.accesses())

        def one(c: Containerd, name: str):
            def job():
                c.ctr("images", "pull", "--plain-http", image.ref, timeout=900)
                _check(c.ctr("run", "--rm", image.ref, name).stdout, image.message)

            return job

        first = _together([one(instances[0], f"{tag}-1")])
        rest = _together([one(c, f"{tag}-{i + 2}") for i, c in enumerate(instances[1:])]) if len(instances) > 1 else 0.0
        egress = sum(a.bytes for a in registry.accesses()[mark:] if a.method == "GET")
        return {"first_s": first, "rest_s": rest, "registry_bytes": egress}
    finally:
        for c in instances:
            c.close()


def run_stargz(work: Path, net: Network, hosts, registry: Registry, image, tag: str, binary: str) -> dict:
    """stargz-snapshotter per host (no P2P): its daemon, a containerd using it, rpull, run."""
    instances, daemons = [], []
    try:
        for h in hosts:
            root = work / tag / f"stargz-{h.name}"
            root.mkdir(parents=True)
            sock = Path(tempfile.mkdtemp(prefix="dffs-stargz-", dir="/run")) / "s.sock"
            log = open(root / "stargzd.log", "ab")
            daemons.append((net.run(h, [binary, "--root", str(root / "state"), "--address", str(sock)],
                                    stdout=log, stderr=log), root, sock))  # fmt: skip
            log.close()
            deadline = time.monotonic() + 30
            while not sock.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"stargz-snapshotter did not start: {(root / 'stargzd.log').read_text()[-2000:]}"
                    )
                time.sleep(0.05)
            c = Containerd(work / tag / f"ctd-{h.name}", netns_host=h, extra_config=proxy_snapshotter("stargz", sock))
            instances.append(c)
            c.start()
        mark = len(registry.accesses())

        def one(c: Containerd, name: str):
            def job():
                result = subprocess.run(
                    c.command(["ctr-remote", "--address", c.address, "images", "rpull", "--plain-http", image.ref]),
                    capture_output=True, text=True, timeout=900,
                )  # fmt: skip
                if result.returncode != 0:
                    raise RuntimeError(f"rpull failed: {result.stderr[-2000:]}")
                _check(c.ctr("run", "--rm", "--snapshotter", "stargz", image.ref, name).stdout, image.message)

            return job

        first = _together([one(instances[0], f"{tag}-1")])
        rest = _together([one(c, f"{tag}-{i + 2}") for i, c in enumerate(instances[1:])]) if len(instances) > 1 else 0.0
        egress = sum(a.bytes for a in registry.accesses()[mark:] if a.method == "GET")
        return {"first_s": first, "rest_s": rest, "registry_bytes": egress}
    finally:
        for c in instances:
            c.close()
        for proc, root, sock in daemons:
            proc.kill()
            proc.wait(10)
            for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
                point = line.split()[4]
                if point.startswith(str(root)):
                    subprocess.run(["umount", "-l", point], capture_output=True)
            shutil.rmtree(sock.parent, ignore_errors=True)


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4, help="random layers besides busybox and the message")
    parser.add_argument("--layer-mib", type=int, default=52)
    parser.add_argument("--rate", default="200mbit", help="tc tbf rate of the registry's link, or 'none'")
    parser.add_argument("--format", choices=("gzip", "estargz"), default="gzip")
    parser.add_argument("--stargz", metavar="PATH", help="a stargz-snapshotter daemon binary: a third contender")
    parser.add_argument("--only", choices=("dffs", "overlayfs", "stargz"), help="one contender (diagnosis)")
    parser.add_argument("--smoke", action="store_true", help="tiny and quick: 2 hosts, 1 run, 2 small layers")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) and print its path")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.hosts, args.layers, args.layer_mib, args.rate = 1, 2, 2, 2, "none"
    work = Path(tempfile.mkdtemp(prefix="dffs-bench-snapshotter."))
    results: dict[str, list[dict]] = {"dffs": [], "overlayfs": []}
    if args.stargz:
        results["stargz"] = []
    if args.only:
        results = {args.only: []}
    try:
        with Network(subnet="10.83.0") as net:
            reg_host, sched_host, seed_host = net.add_host("registry"), net.add_host("sched"), net.add_host("seed")
            hosts = [net.add_host(f"h{i}") for i in range(1, args.hosts + 1)]
            registry = Registry(work / "registry", host=reg_host.ip, port=5000, netns_host=reg_host)
            registry.start()
            try:
                image = build_busybox_image(
                    registry,
                    "bench/lazy",
                    "v1",
                    layers=2 + args.layers,
                    payload_bytes=args.layer_mib << 20,
                    message="hello from the snapshotter bench",
                )
                if args.format == "estargz":
                    helper = Containerd(work / "ctd-convert", netns_host=hosts[0]).start()
                    try:
                        image = convert_estargz(helper, registry, image, "v1-esgz")
                    finally:
                        helper.close()
                image_bytes = sum(image.sizes.values())
                if args.rate != "none":
                    net.limit(reg_host, args.rate)
                for run in range(args.runs):
                    order = list(results) if run % 2 == 0 else list(reversed(results))
                    for name in order:
                        tag = f"{name}{run}"
                        if name == "dffs":
                            r = run_dffs(work, net, hosts, sched_host, seed_host, registry, image, tag)
                        elif name == "stargz":
                            r = run_stargz(work, net, hosts, registry, image, tag, args.stargz)
                        else:
                            r = run_overlayfs(work, hosts, registry, image, tag)
                        results[name].append(r)
                        print(
                            f"run {run + 1} {name:9s} host 1 {r['first_s']:6.2f} s  hosts 2-{args.hosts} "
                            f"{r['rest_s']:6.2f} s  registry {r['registry_bytes'] / image_bytes:5.2f}x the image",
                            flush=True,
                        )
            finally:
                registry.close()
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    table = {name: {k: summary([r[k] for r in runs]) for k in ("first_s", "rest_s", "registry_bytes")}
             for name, runs in results.items()}  # fmt: skip
    if LOST_OUTPUT:
        print(f"(ctr lost the output of {LOST_OUTPUT} container runs that succeeded)")
    print(f"\nimage {image_bytes / 2**20:.1f} MiB ({args.format}), {args.hosts} hosts, registry link {args.rate}, "
          f"{args.runs} runs (median, min-max)")  # fmt: skip
    for name, t in table.items():
        print(
            f"{name:9s} host 1 {t['first_s']['median']:6.2f} s ({t['first_s']['min']:.2f}-{t['first_s']['max']:.2f})"
            f"  hosts 2-{args.hosts} {t['rest_s']['median']:6.2f} s ({t['rest_s']['min']:.2f}-{t['rest_s']['max']:.2f})"
            f"  registry {t['registry_bytes']['median'] / image_bytes:5.2f}x the image"
        )
    if "dffs" not in table or "overlayfs" not in table:
        return 0
    speedup = table["overlayfs"]["rest_s"]["median"] / max(1e-9, table["dffs"]["rest_s"]["median"])
    egress = table["dffs"]["registry_bytes"]["median"] / image_bytes
    print(f"hosts 2-{args.hosts}: dffs {speedup:.1f}x faster than overlayfs (target >= 5x); "
          f"dffs registry egress {egress:.2f}x the image over all hosts (target <= 1.05x)")  # fmt: skip
    print(
        json.dumps(
            {
                "bench": "snapshotter",
                "format": args.format,
                "hosts": args.hosts,
                "runs": args.runs,
                "image_bytes": image_bytes,
                "rate": args.rate,
                "results": {
                    n: {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in t.items()} for n, t in table.items()
                },  # fmt: skip
                "speedup_rest": round(speedup, 2),
                "registry_egress_ratio": round(egress, 3),
                "machine": machine(),
                "pid": os.getpid(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
