"""Peer-to-peer on one machine: scheduler, seed and peers as real processes on loopback."""

from __future__ import annotations

import os
import re
import socket
import time

import pytest
from cli import run_dffs, sha256_file
from cluster import Daemon, scheduler

MiB = 1024 * 1024


def wait_for(predicate, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def registered_tasks(log: str) -> int:
    """Tasks a daemon's log says it registered as finished peers in batched calls (dffs.daemon.small_tasks)."""
    return sum(int(n) for n in re.findall(r"event=finished_tasks_registered \S+ tasks=(\d+)", log))


@pytest.fixture
def swarm(tmp_path, nginx_origin):
    """An nginx origin serving tmp_path/www, a scheduler and a seed; ``swarm.peer(name, mount=)`` adds
    daemons. Every process is stopped at teardown."""
    started = []

    class Swarm:
        root = tmp_path / "www"

        def start(self):
            self.root.mkdir()
            self.origin = nginx_origin(self.root)
            started.append(sched := scheduler(tmp_path))
            self.addr = f"127.0.0.1:{sched.match.group(2)}"
            self.seed = self.peer("seed", seed=True)
            return self

        def peer(self, name, **kwargs):
            daemon = Daemon(tmp_path, name, self.addr, **kwargs)
            started.append(daemon)
            return daemon.start()

    yield Swarm()
    for process in reversed(started):
        process.stop()


@pytest.mark.slow
def test_seed_then_peers_share_pieces_through_mounts(swarm, make_file):
    swarm.start()
    digest = make_file(swarm.root / "f.bin", 24 * MiB + 5, seed=31)
    origin = swarm.origin
    a, b = swarm.peer("peer-a", mount=True), swarm.peer("peer-b", mount=True)

    assert sha256_file(a.path("/f.bin", origin)) == digest
    origin.sync_log()
    first = origin.body_bytes("/f.bin", "GET")
    assert first <= 1.05 * (24 * MiB + 5), (first, a.output(), swarm.seed.output())

    assert sha256_file(b.path("/f.bin", origin)) == digest
    origin.sync_log()
    assert origin.body_bytes("/f.bin", "GET") == first  # B's bytes all came from peers


def test_dffs_get_with_scheduler_joins_the_swarm_without_a_daemon(swarm, make_file, tmp_path):
    swarm.start()
    digest = make_file(swarm.root / "g.bin", 12 * MiB + 3, seed=32)
    out = tmp_path / "g.out"
    result = run_dffs(
        "get",
        swarm.origin.url("/g.bin"),
        "-O",
        str(out),
        "--data-dir",
        str(tmp_path / "embedded"),
        "--scheduler",
        swarm.addr,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert sha256_file(out) == digest
    # the embedded peer took every piece from the seed: the origin served the seed alone
    swarm.origin.sync_log()
    assert swarm.origin.body_bytes("/g.bin", "GET") == 12 * MiB + 3


def test_dffs_get_when_no_scheduler_answers_takes_the_origin_at_once(tmp_path, nginx_origin, make_file):
    """Every scheduler configured refuses connections (down, or not started yet): the download
    goes to the origin and finishes, rather than waiting forever for a conversation to begin."""
    (tmp_path / "www").mkdir()
    digest = make_file(tmp_path / "www" / "n.bin", 9 * MiB + 1, seed=34)
    origin = nginx_origin(tmp_path / "www")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    out = tmp_path / "n.out"
    result = run_dffs(
        "get",
        origin.url("/n.bin"),
        "-O",
        str(out),
        "--data-dir",
        str(tmp_path / "d"),
        "--scheduler",
        closed,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert sha256_file(out) == digest
    origin.sync_log()
    assert origin.body_bytes("/n.bin", "GET") == 9 * MiB + 1


def test_small_files_are_shared_from_the_pack_through_mounts(swarm, make_file):
    """Objects of one small piece live in each daemon's shared pack, not a task directory each, and
    still travel between peers: the origin sends every file once, whoever reads it after."""
    swarm.start()
    files = {
        f"/small/f{i}.bin": make_file(swarm.root / "small" / f"f{i}.bin", 700 + 37_000 * i, seed=40 + i)
        for i in range(8)
    }
    a, b, c = (swarm.peer(f"peer-{name}", mount=True) for name in "abc")
    for path, digest in files.items():
        assert sha256_file(a.path(path, swarm.origin)) == digest
    swarm.origin.sync_log()
    first = {path: swarm.origin.body_bytes(path, "GET") for path in files}
    assert all(first[path] == (swarm.root / path.lstrip("/")).stat().st_size for path in files), first

    # B lists the directory first (a dataset's file list), C looks every file up by name.
    assert sorted(os.listdir(b.path("/small", swarm.origin))) == sorted(p.rsplit("/", 1)[1] for p in files)
    for peer in (b, c):
        for path, digest in files.items():
            assert sha256_file(peer.path(path, swarm.origin)) == digest
    swarm.origin.sync_log()
    assert {path: swarm.origin.body_bytes(path, "GET") for path in files} == first  # B's and C's came from peers
    # Issue 13 part 3: the listing (B) or the lookup (C) named each file's holders, so no file took a
    # conversation with the scheduler; each was registered as a holder of them all in batched calls.
    for peer in (b, c):
        log = peer.output()
        assert "event=parents" not in log and "event=back_to_source" not in log, log[-3000:]
        wait_for(lambda p=peer: registered_tasks(p.output()) == len(files), what=f"{peer} holding every file")
    assert len(re.findall(r"event=finished_tasks_registered", b.output())) < len(files)  # batched
    for peer in (a, b, c):
        assert not any((peer.data_dir / "tasks").iterdir()), peer.data_dir  # no task directories
        assert (peer.data_dir / "small" / "objects.pack").stat().st_blocks > 0


def test_a_small_file_whose_holders_are_gone_is_fetched_through_the_conversation(swarm, make_file):
    """A hint can be stale: the holders a listing named may be gone by the time the file is read. The
    read still gets the right bytes (the scheduler's conversation: the origin here, as nobody is left)."""
    swarm.start()
    files = {f"/d/g{i}.bin": make_file(swarm.root / "d" / f"g{i}.bin", 5_000 + 999 * i, seed=60 + i) for i in range(2)}
    a, b = swarm.peer("peer-a", mount=True), swarm.peer("peer-b", mount=True)
    for path, digest in files.items():
        assert sha256_file(a.path(path, swarm.origin)) == digest
    assert len(os.listdir(b.path("/d", swarm.origin))) == len(files)  # B learns the holders: A and the seed
    a.stop()
    swarm.seed.stop()
    for path, digest in files.items():
        assert sha256_file(b.path(path, swarm.origin)) == digest
    log = b.output()
    assert log.count("event=holders_failed") == len(files) and "action=conversation" in log, log[-3000:]
    assert b.alive()
