"""Preheat jobs: the pure plan, then an image preheat against Debian's docker-registry
with a real manager, scheduler, seed and peer (all on loopback)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import pytest
from cli import sha256_file
from cluster import Daemon, Manager, Process
from registry import Registry, build_busybox_image
from test_p2p_cluster import wait_for

from dffs.manager.preheat import Download, Target, choose_seed, plan, summarize


def seeds(*specs):
    return [Target(f"s{i}", f"10.0.0.{i}", 65000, cluster) for i, cluster in specs]


def test_plan_one_seed_per_cluster_spread_by_url():
    downloads = [Download(f"http://o/{n}") for n in range(40)]
    cluster_seeds = seeds((1, 1), (2, 1), (3, 2))
    pairs = plan(downloads, "seed", cluster_seeds, [])
    assert len(pairs) == 80  # each URL once per cluster
    assert {t.hostname for d, t in pairs if t.cluster_id == 2} == {"s3"}
    assert {t.hostname for d, t in pairs if t.cluster_id == 1} == {"s1", "s2"}  # spread
    # Stable: the same URL goes to the same seed whatever the order of the list.
    assert choose_seed("http://o/7", cluster_seeds[:2]) == choose_seed("http://o/7", cluster_seeds[1::-1])


def test_plan_all_seeds_and_all_hosts_without_duplicates():
    downloads = [Download("http://o/a")]
    cluster_seeds = seeds((1, 1), (2, 1))
    hosts = [Target("s1", "10.0.0.1", 65000, 1), Target("p1", "10.0.0.9", 65000, 1)]
    assert [t.hostname for _, t in plan(downloads, "all-seeds", cluster_seeds, hosts)] == ["s1", "s2"]
    assert [t.hostname for _, t in plan(downloads, "all", cluster_seeds, hosts)] == ["s1", "s2", "p1"]
    assert plan(downloads, "seed", [], hosts) == []


def test_summarize():
    assert summarize([{"success": True}] * 3) == ("succeeded", "3 downloads succeeded")
    state, description = summarize([{"success": True}, {"success": False, "reason": "NOT_FOUND: 404"}])
    assert state == "failed" and description == "1 of 2 downloads failed; first: NOT_FOUND: 404"


@pytest.fixture
def registry(tmp_path):
    with Registry(tmp_path / "registry") as reg:
        yield reg


def ctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dffs", "ctl", *args], capture_output=True, text=True, timeout=90)


def test_image_preheat_covers_every_blob_then_peers_read_without_the_registry(tmp_path, registry):
    image = build_busybox_image(registry, "test/preheat", "v1", layers=3)
    (tmp_path / "sched.toml").write_text("manager_refresh_interval = 0.5\n")
    (tmp_path / "daemon.toml").write_text("announce_interval = 1\nmanager_refresh_interval = 0.5\n")
    processes: list[Process] = []
    try:
        manager = Manager(tmp_path).start()
        processes.append(manager)
        sched = Process(
            [
                "scheduler",
                "--listen",
                "127.0.0.1:0",
                "--manager",
                manager.grpc_address,
                "--config",
                str(tmp_path / "sched.toml"),
            ],
            tmp_path / "sched.log",
            r"listening on (\S+):(\d+)",
        ).start()
        processes.append(sched)
        wait_for(lambda: manager.http("GET", "/schedulers")[1]["schedulers"], what="scheduler registered")
        seed = Daemon(
            tmp_path,
            "seed",
            None,
            manager=manager.grpc_address,
            seed=True,
            extra=("--config", str(tmp_path / "daemon.toml"), "--proxy-port", "-1", "--metrics-port", "-1"),
        ).start()
        processes.append(seed)
        peer = Daemon(
            tmp_path,
            "peer",
            None,
            manager=manager.grpc_address,
            extra=(
                "--config",
                str(tmp_path / "daemon.toml"),
                "--registry-mirror",
                registry.url,
                "--proxy-port",
                "0",
                "--metrics-port",
                "-1",
            ),
        ).start()
        processes.append(peer)

        # Bad input first: an unknown image fails the job with the reason; nothing else changes.
        missing = ctl(
            "--manager",
            manager.grpc_address,
            "preheat",
            f"oci://{registry.address}/test/nothing:v9",
            "--wait",
            "--timeout",
            "30",
        )
        assert missing.returncode == 1 and "image not found (404" in missing.stderr, missing

        done = ctl(
            "--manager",
            manager.grpc_address,
            "--json",
            "preheat",
            f"oci://{registry.address}/test/preheat:v1",
            "--scope",
            "all-seeds",
            "--wait",
            "--timeout",
            "60",
        )
        assert done.returncode == 0, (done.stdout, done.stderr, manager.output()[-3000:])
        job = json.loads(done.stdout)
        assert job["state"] == "succeeded"
        urls = {r["tasks"][0]["url"] for r in job["results"]}
        assert urls == {f"{registry.url}/v2/test/preheat/blobs/{d}" for d in image.blobs}  # config + every layer
        assert all(r["success"] and r["hostname"] == "seed" for r in job["results"])
        for digest in image.blobs:
            assert registry.blob_gets(digest) == 1, digest

        # A normal peer pulls a layer: from the seed, not the registry.
        layer = image.layers[-1]
        out = tmp_path / "layer.tar"
        got = subprocess.run(
            [
                sys.executable,
                "-m",
                "dffs",
                "get",
                f"{registry.url}/v2/test/preheat/blobs/{layer}",
                "-O",
                str(out),
                "--data-dir",
                str(peer.data_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert got.returncode == 0, (got.stderr, peer.output()[-3000:])
        assert "sha256:" + sha256_file(out) == layer
        assert registry.blob_gets(layer) == 1

        # The peer's registry mirror asks for the same blob URL, hence the same task: a layer the
        # preheat put on the seed comes through the mirror without the registry.
        proxy_port = re.search(r"proxy_port=(\d+)", peer.match.string).group(1)
        first_layer = image.layers[0]
        mirrored = subprocess.run(
            [
                "curl",
                "-sSf",
                f"http://127.0.0.1:{proxy_port}/v2/test/preheat/blobs/{first_layer}?ns={registry.address}",
            ],
            capture_output=True,
            timeout=60,
        )
        assert mirrored.returncode == 0, (mirrored.stderr, peer.output()[-3000:])
        assert "sha256:" + hashlib.sha256(mirrored.stdout).hexdigest() == first_layer
        assert registry.blob_gets(first_layer) == 1

        # Scope "all": every host the scheduler knows downloads it, the normal peer too.
        config_url = f"{registry.url}/v2/test/preheat/blobs/{image.config_digest}"
        everywhere = ctl(
            "--manager",
            manager.grpc_address,
            "--json",
            "preheat",
            config_url,
            "--scope",
            "all",
            "--wait",
            "--timeout",
            "60",
        )
        assert everywhere.returncode == 0, (everywhere.stdout, everywhere.stderr)
        assert sorted(r["hostname"] for r in json.loads(everywhere.stdout)["results"]) == ["peer", "seed"]
        assert (peer.data_dir / "tasks").exists()

        listed = ctl("--manager", manager.grpc_address, "jobs")
        assert listed.returncode == 0 and "succeeded" in listed.stdout and "failed" in listed.stdout, listed
    finally:
        for process in reversed(processes):
            process.stop()
