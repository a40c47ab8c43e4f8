"""containerd pulling through the registry mirror on two hosts, P2P in between.

Topology, every host its own network namespace on one bridge: a real
docker-registry (with an image built offline by umoci + busybox-static, pushed
by skopeo), a scheduler, a seed daemon, and two hosts each running a dffs
daemon (proxy on 127.0.0.1:4001, ``--registry-mirror`` the registry) and a
real containerd whose ``hosts.toml`` names the proxy as the registry's mirror.
Both hosts pull with ``ctr images pull --hosts-dir`` and run the image with
runc; the registry's access log must show every blob sent once, to the seed.
Processes, mounts and namespaces are torn down even on failure.
"""

from __future__ import annotations

import pytest
from cluster import Daemon, Process
from containerd import Containerd, write_hosts_toml
from netns import Network
from registry import Registry, build_busybox_image

MiB = 1024 * 1024
DAEMON_CONFIG = "announce_interval = 1\nparent_wait = 5\nparent_rounds = 3\n"


@pytest.mark.slow
def test_containerd_pulls_through_the_mirror_on_two_hosts(tmp_path):
    with Network(subnet="10.79.0") as net:
        hosts = {name: net.add_host(name) for name in ("registry", "sched", "seed", "h1", "h2")}
        registry = Registry(tmp_path / "registry", host=hosts["registry"].ip, port=5000, netns_host=hosts["registry"])
        started: list = []
        try:
            registry.start()
            # busybox, the message, and a 6 MiB random layer (two pieces: shared piece by piece)
            image = build_busybox_image(
                registry, "test/busybox", "v1", layers=3, payload_bytes=6 * MiB, message="hello through the dffs mirror"
            )
            sched = Process(
                ["scheduler", "--listen", f"{hosts['sched'].ip}:8002"],
                tmp_path / "scheduler.log",
                r"listening on (\S+):(\d+)",
                prefix=hosts["sched"].command([]),
            )
            started.append(sched.start())
            net.processes.append(sched.proc)
            config = tmp_path / "daemon.toml"
            config.write_text(DAEMON_CONFIG)
            daemons = {}
            for name in ("seed", "h1", "h2"):
                extra = ["--config", str(config)]
                if name != "seed":
                    extra += ["--registry-mirror", registry.url, "--proxy-port", "4001"]
                daemon = Daemon(
                    tmp_path,
                    name,
                    f"{hosts['sched'].ip}:8002",
                    ip=hosts[name].ip,
                    seed=name == "seed",
                    prefix=hosts[name].command([]),
                    extra=tuple(extra),
                )
                started.append(daemon.start())
                net.processes.append(daemon.proc)
                daemons[name] = daemon
            hosts_dir = write_hosts_toml(tmp_path / "hosts.d", registry.address, "http://127.0.0.1:4001")
            for name in ("h1", "h2"):
                ctd = Containerd(tmp_path / f"containerd-{name}", netns_host=hosts[name])
                started.append(ctd)
                ctd.start()
                ctd.pull(image.ref, hosts_dir=hosts_dir)
                output = ctd.run(image.ref, f"hello-{name}")
                assert image.message in output, (name, output)

            for digest in image.blobs:
                # each blob left the registry once, whole, and to the seed: the hosts had it by P2P
                seen = [a for a in registry.accesses() if digest in a.path]
                assert registry.blob_bytes(digest) == image.sizes[digest], seen
                assert registry.blob_clients(digest) == {hosts["seed"].ip}, seen
            for name in ("h1", "h2"):
                log = daemons[name].output()
                for digest in image.blobs:
                    assert f"event=digest_verified digest={digest}" in log, (name, digest, log[-3000:])
        finally:
            for item in reversed(started):
                try:
                    item.close() if isinstance(item, Containerd) else item.stop()
                except Exception:  # keep tearing down the rest
                    pass
            registry.close()
