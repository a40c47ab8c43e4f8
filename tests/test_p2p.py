"""Peer-to-peer on one machine: scheduler, seed and peers as real processes on loopback."""

from __future__ import annotations

import pytest

from cli import sha256_file
from cluster import Daemon, scheduler

MiB = 1024 * 1024


@pytest.fixture
def procs():
    started = []
    yield started
    for p in reversed(started):
        p.stop()


@pytest.mark.slow
def test_seed_then_peers_share_pieces_through_mounts(tmp_path, nginx_origin, make_file, procs):
    root = tmp_path / "www"
    root.mkdir()
    digest = make_file(root / "f.bin", 24 * MiB + 5, seed=31)
    origin = nginx_origin(root)
    sched = scheduler(tmp_path)
    procs.append(sched)
    addr = f"127.0.0.1:{sched.match.group(2)}"
    seed = Daemon(tmp_path, "seed", addr, seed=True)
    procs.append(seed)
    seed.start()
    a = Daemon(tmp_path, "peer-a", addr, mount=True)
    procs.append(a)
    a.start()
    b = Daemon(tmp_path, "peer-b", addr, mount=True)
    procs.append(b)
    b.start()

    assert sha256_file(a.path("/f.bin", origin)) == digest
    origin.wait_for_requests(2)
    first = origin.body_bytes("/f.bin", "GET")
    assert first <= 1.05 * (24 * MiB + 5), (first, a.output(), seed.output())

    assert sha256_file(b.path("/f.bin", origin)) == digest
    assert origin.body_bytes("/f.bin", "GET") == first  # B's bytes all came from peers
