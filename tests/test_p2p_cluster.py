"""P2P across hosts: every host its own network namespace, every server bound to its address.

Topology: origin (nginx) + scheduler + seed + 5 peers on a bridge. The test
builds it and always tears it down (processes, mounts, namespaces).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from cli import sha256_file
from cluster import Daemon, Process
from netns import Network

MiB = 1024 * 1024


@pytest.fixture
def net():
    with Network() as network:
        yield network


def start_cluster(net, tmp_path, nginx_origin, peers: int, *, mounts: bool = False):
    hosts = {name: net.add_host(name) for name in ["origin", "sched", "seed", *[f"p{i}" for i in range(1, peers + 1)]]}
    origin = nginx_origin(tmp_path / "www", host=hosts["origin"].ip, port=8080, netns=hosts["origin"].netns)
    sched_ip = hosts["sched"].ip
    sched = Process(["scheduler", "--listen", f"{sched_ip}:8002"], tmp_path / "scheduler.log",
                    r"listening on (\S+):(\d+)", prefix=hosts["sched"].command([])).start()
    net.processes.append(sched.proc)
    addr = f"{sched_ip}:8002"
    daemons = {}
    for name in ["seed", *[f"p{i}" for i in range(1, peers + 1)]]:
        d = Daemon(tmp_path, name, addr, ip=hosts[name].ip, seed=name == "seed", mount=mounts and name != "seed",
                   prefix=hosts[name].command([]))
        d.start()
        net.processes.append(d.proc)
        daemons[name] = d
    return origin, sched, daemons


def stop_all(sched, daemons):
    for d in daemons.values():
        d.stop()
    sched.stop()


def done_line(log: str) -> tuple[int, int]:
    match = re.search(r"event=download_done bytes=\d+ origin_bytes=(\d+) peer_bytes=(\d+)", log)
    assert match, log[-3000:]
    return int(match.group(1)), int(match.group(2))


@pytest.mark.slow
def test_five_peers_get_one_file_at_once(net, tmp_path, nginx_origin, make_file):
    size = 256 * MiB
    (tmp_path / "www").mkdir()
    digest = make_file(tmp_path / "www" / "big.bin", size, seed=41)
    origin, sched, daemons = start_cluster(net, tmp_path, nginx_origin, peers=5)
    try:
        url = f"http://{origin.host}:8080/big.bin"
        gets = {}
        for name in [f"p{i}" for i in range(1, 6)]:
            out = tmp_path / f"{name}.out"
            gets[name] = (out, subprocess.Popen(
                [sys.executable, "-m", "dffs", "get", url, "-O", str(out), "--data-dir", str(daemons[name].data_dir)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for name, (out, proc) in gets.items():
            _, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, (name, err, daemons[name].output()[-3000:])
            assert sha256_file(out) == digest, name
        origin.wait_for_requests(1)
        sent = origin.body_bytes("/big.bin", "GET")
        assert sent <= 1.05 * size, sent
        for name in [f"p{i}" for i in range(1, 6)]:
            from_origin, from_peers = done_line(daemons[name].output())
            assert from_peers > from_origin, (name, from_origin, from_peers)
    finally:
        stop_all(sched, daemons)


@pytest.mark.slow
def test_second_peers_mount_costs_the_origin_nothing(net, tmp_path, nginx_origin, make_file):
    (tmp_path / "www").mkdir()
    digest = make_file(tmp_path / "www" / "m.bin", 24 * MiB + 7, seed=42)
    origin, sched, daemons = start_cluster(net, tmp_path, nginx_origin, peers=2, mounts=True)
    try:
        a, b = daemons["p1"], daemons["p2"]
        assert sha256_file(a.path("/m.bin", origin)) == digest
        origin.wait_for_requests(1)
        before = origin.body_bytes("/m.bin", "GET")
        assert sha256_file(b.path("/m.bin", origin)) == digest
        assert origin.body_bytes("/m.bin", "GET") == before
    finally:
        stop_all(sched, daemons)
