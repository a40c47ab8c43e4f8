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


def test_dffs_get_with_scheduler_joins_the_swarm_without_a_daemon(tmp_path, nginx_origin, make_file, procs):
    from cli import run_dffs

    root = tmp_path / "www"
    root.mkdir()
    digest = make_file(root / "g.bin", 12 * MiB + 3, seed=32)
    origin = nginx_origin(root)
    sched = scheduler(tmp_path)
    procs.append(sched)
    addr = f"127.0.0.1:{sched.match.group(2)}"
    seed = Daemon(tmp_path, "seed", addr, seed=True)
    procs.append(seed)
    seed.start()
    out = tmp_path / "g.out"
    result = run_dffs("get", origin.url("/g.bin"), "-O", str(out), "--data-dir", str(tmp_path / "embedded"),
                      "--scheduler", addr, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sha256_file(out) == digest
    # the embedded peer took every piece from the seed: the origin served the seed alone
    origin.wait_for_requests(2)
    assert origin.body_bytes("/g.bin", "GET") == 12 * MiB + 3
