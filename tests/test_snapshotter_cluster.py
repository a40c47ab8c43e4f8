"""Lazy pulls on a cluster of network-namespace hosts: registry, scheduler, seed, two hosts.

Each host runs ``dffs daemon --snapshotter`` (P2P through the scheduler, the
seed going to the registry) and a containerd 1.6 whose ``dffs`` proxy
snapshotter is that daemon. Host 1 pulls first: its gzip layers' indexes are
built while the blobs stream through and are shared as P2P tasks. Host 2 then
starts the same image lazily: it fetches the indexes and only the pieces the
container reads, at most 10 % of the image, before the container's output;
later the learned list of the files host 1's container read is prefetched.
The eStargz image (converted with ``ctr-remote``) needs no index at all.
Processes, mounts and namespaces are torn down even on failure.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster import Daemon, Process
from layer_images import build_rich_image, convert_estargz
from netns import Network
from registry import Registry
from snapshotter_env import SnapshotterHost

MiB = 1024 * 1024


def _cluster(tmp_path: Path, net: Network, started: list, config: str):
    hosts = {name: net.add_host(name) for name in ("registry", "sched", "seed", "h1", "h2")}
    registry = Registry(tmp_path / "registry", host=hosts["registry"].ip, port=5000, netns_host=hosts["registry"])
    registry.start()
    started.append(registry)
    sched = Process(
        ["scheduler", "--listen", f"{hosts['sched'].ip}:8002"],
        tmp_path / "scheduler.log",
        r"listening on (\S+):(\d+)",
        prefix=hosts["sched"].command([]),
    )
    started.append(sched.start())
    net.processes.append(sched.proc)
    conf = tmp_path / "daemon.toml"
    conf.write_text(config)
    seed_conf = tmp_path / "seed.toml"  # the seed is a plain daemon: no [snapshotter] table
    seed_conf.write_text(config.split("[snapshotter]")[0])
    seed = Daemon(
        tmp_path,
        "seed",
        f"{hosts['sched'].ip}:8002",
        ip=hosts["seed"].ip,
        seed=True,
        prefix=hosts["seed"].command([]),
        extra=("--config", str(seed_conf), "--proxy-port", "-1", "--metrics-port", "0"),
    )
    started.append(seed.start())
    net.processes.append(seed.proc)
    nodes = []
    for name in ("h1", "h2"):
        node = SnapshotterHost(
            tmp_path,
            name,
            scheduler=f"{hosts['sched'].ip}:8002",
            ip=hosts[name].ip,
            netns_host=hosts[name],
            extra=("--config", str(conf)),
        )
        started.append(node)
        node.start()
        net.processes.append(node.daemon.proc)
        nodes.append(node)
    return hosts, registry, nodes


def _close(started: list) -> None:
    for item in reversed(started):
        try:
            item.close() if hasattr(item, "close") else item.stop()
        except Exception:  # keep tearing down the rest
            pass


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["gzip", "estargz"])
def test_the_second_host_starts_lazily_from_the_swarm(tmp_path, fmt):
    config = "announce_interval = 1\nparent_wait = 5\nparent_rounds = 3\n[snapshotter]\nprefetch = false\n"
    with Network(subnet="10.81.0") as net:
        started: list = []
        try:
            hosts, registry, (h1, h2) = _cluster(tmp_path, net, started, config)
            image = build_rich_image(registry, "test/lazy", "v1", payload_bytes=24 * MiB)
            if fmt == "estargz":
                image = convert_estargz(h1.containerd, registry, image, "v1-esgz")
                h1.ctr("images", "rm", image.ref.replace(":v1-esgz", ":v1"))
            total = sum(image.sizes[d] for d in image.layers)
            out = h1.image_pull(image.ref).stdout
            assert "lazy=3" in out, (out, h1.daemon.output()[-3000:])
            assert image.message in h1.run(image.ref, "c1")

            before = h2.downloaded()
            out = h2.image_pull(image.ref).stdout
            assert "lazy=3" in out, (out, h2.daemon.output()[-3000:])
            assert image.message in h2.run(image.ref, "c2")
            fetched = h2.downloaded() - before
            print(f"{fmt}: host 2 fetched {fetched:.0f} of {total} image bytes ({100 * fetched / total:.1f} %)")
            assert fetched <= 0.10 * total, (fetched, total, h2.daemon.output()[-3000:])
            # host 2's bytes came from the swarm: the registry sent each layer blob to the seed only
            why = [ln for ln in h2.daemon.output().splitlines() if " W" in ln[:30] or "source" in ln][-12:]
            for digest in image.layers:
                h2_asked = [a for a in registry.accesses() if a.client == hosts["h2"].ip]
                assert registry.blob_clients(digest) <= {hosts["seed"].ip}, (digest, h2_asked, why)
        finally:
            _close(started)


@pytest.mark.slow
def test_what_one_host_read_first_is_prefetched_on_the_next(tmp_path):
    config = (
        "announce_interval = 1\nparent_wait = 5\nparent_rounds = 3\n"
        "[snapshotter]\nprefetch_delay = 600\nrecord_window = 1.0\n"
    )
    with Network(subnet="10.82.0") as net:
        started: list = []
        try:
            hosts, registry, (h1, h2) = _cluster(tmp_path, net, started, config)
            image = build_rich_image(registry, "test/learn", "v1", payload_bytes=8 * MiB)
            h1.image_pull(image.ref)
            h1.run(image.ref, "c1", "/bin/busybox", "cat", "/data/small.txt")
            h1.daemon_log_waits_for("event=shared_document_published kind=prefetch-list")
            h2.image_pull(image.ref)
            log = h2.daemon_log_waits_for("event=learned_prefetch_done")
            assert "files=0" not in log.split("event=learned_prefetch_done")[-1].splitlines()[0], log[-2000:]
            assert h2.metric("dffs_daemon_layer_prefetched_bytes_total", layer=image.layers[2]) > 0
        finally:
            _close(started)


@pytest.mark.slow
def test_a_registry_gone_after_the_first_pull_does_not_stop_the_next_host(tmp_path):
    config = "announce_interval = 1\nparent_wait = 5\nparent_rounds = 3\n[snapshotter]\nprefetch = false\n"
    with Network(subnet="10.84.0") as net:
        started: list = []
        try:
            hosts, registry, (h1, h2) = _cluster(tmp_path, net, started, config)
            image = build_rich_image(registry, "test/gone", "v1", payload_bytes=4 * MiB)
            assert "lazy=3" in h1.image_pull(image.ref).stdout
            assert image.message in h1.run(image.ref, "c1")
            registry.close()  # the registry is gone: documents and layers must come from the swarm
            out = h2.image_pull(image.ref).stdout
            assert "lazy=3" in out, (out, h2.daemon.output()[-3000:])
            assert image.message in h2.run(image.ref, "c2")
            listing = h2.run(image.ref, "c3", "/bin/busybox", "ls", "/data")
            assert "small.txt" in listing
        finally:
            _close(started)
