"""Disk and storage faults under a running daemon with a mount: a full disk, a read-only or
removed data dir, a piece corrupted at rest at a parent.

Real parts: a ``dffs daemon --mount`` process whose data dir is on a small tmpfs (``mount -t
tmpfs -o size=40m``) or a read-only bind mount, nginx as the origin, readers that are ordinary
tools (``cat``, ``dffs get``) in subprocesses with timeouts several times the mount's read
timeout (a hang fails the test instead of stalling it); the corruption test runs two daemons
and a scheduler in network namespaces.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli import sha256_file
from mounts import MountProcess, force_unmount, journaled_pieces

MiB = 1024 * 1024
PIECE = 4 * MiB
READ_TIMEOUT = 10
#: A reader must have its answer well within this (several read timeouts): never a hang.
READER_TIMEOUT = 6 * READ_TIMEOUT
PORTS = ("--upload-port", "0", "--rpc-port", "0", "--proxy-port", "-1", "--metrics-port", "-1")


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MiB tmpfs at tmp_path/disk, unmounted at teardown."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "dffs-test-disk", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.fixture
def daemons(tmp_path):
    """Factory: ``daemons(data_dir, *flags)`` -> a started ``dffs daemon --mount`` (tmp_path/mnt),
    its log outside the data dir (a full disk must not eat it); all stopped at teardown."""
    made: list[MountProcess] = []

    def start(data_dir: Path, *flags: str) -> MountProcess:
        m = MountProcess(
            tmp_path / "mnt", data_dir, *PORTS, "--read-timeout", str(READ_TIMEOUT), *flags, command=("daemon",)
        )
        m.log_path = tmp_path / f"daemon.{len(made) + 1}.log"
        made.append(m)
        return m.start(timeout=30)

    yield start
    for m in made:
        m.stop()
    force_unmount(tmp_path / "mnt")


def read(path: Path) -> subprocess.CompletedProcess:
    """``cat PATH``: the whole file, or the error a program sees."""
    return subprocess.run(["cat", str(path)], capture_output=True, timeout=READER_TIMEOUT)


def fill(path: Path, size: int) -> None:
    """Take ``size`` bytes of the disk (what another program would do to it)."""
    with open(path, "wb") as f:
        f.write(os.urandom(size))


def url_path(daemon: MountProcess, origin, name: str) -> Path:
    return daemon.mountpoint / "http" / f"{origin.host}:{origin.port}" / name


def test_full_disk_gives_eio_keeps_the_journal_and_reads_succeed_once_space_returns(
    tmp_path, small_disk, daemons, nginx_origin, make_file
):
    www = tmp_path / "www"
    www.mkdir()
    digest = make_file(www / "big.bin", 24 * MiB, seed=81)  # larger than the space left
    origin = nginx_origin(www)
    fill(small_disk / "filler", 24 * MiB)  # 16 MiB left: room for three pieces, not six
    data = small_disk / "data"
    daemon = daemons(data)
    path = url_path(daemon, origin, "big.bin")

    result = read(path)
    assert result.returncode != 0 and b"Input/output error" in result.stderr
    assert len(result.stdout) < 24 * MiB
    assert daemon.alive()
    failures = [line for line in daemon.output().splitlines() if "event=read_failed" in line]
    assert failures and all("No space left on device" in line for line in failures), failures
    assert any(f"in {data}: No space left on device" in line for line in failures)  # the cause, and where
    # The journal is consistent: a daemon killed now replays it, and every recorded piece verifies.
    daemon.kill9()
    kept = next(iter(journaled_pieces(data).values()))
    assert 0 < len(kept) < 6
    daemon = daemons(data)
    with open(path, "rb") as f:  # opens the task: after a crash every recorded piece is verified
        f.read(1)
    log = daemon.output()
    for trouble in ("journal_torn_tail", "recovery_dropped_pieces", "task_unusable", "task_open_failed"):
        assert trouble not in log, log[-3000:]
    assert next(iter(journaled_pieces(data).values())) >= kept

    (small_disk / "filler").unlink()  # space is back: the same daemon reads the whole file
    result = read(path)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == digest
    assert daemon.alive()


def test_full_disk_with_a_quota_the_gc_evicts_cold_pieces_and_the_read_succeeds(
    tmp_path, small_disk, daemons, nginx_origin, make_file
):
    www = tmp_path / "www"
    www.mkdir()
    cold_digest = make_file(www / "cold.bin", 12 * MiB, seed=82)
    digest = make_file(www / "new.bin", 12 * MiB, seed=83)
    origin = nginx_origin(www)
    data = small_disk / "data"
    # Under its quota (high watermark 25.6 MiB) the cache never fills the disk by itself;
    # something else on the filesystem does.
    daemon = daemons(data, "--storage-quota", "32MiB")
    assert sha256_file(url_path(daemon, origin, "cold.bin")) == cold_digest
    cold_task = _task_of(data, "cold.bin")  # before the GC may delete it whole
    fill(small_disk / "filler", 20 * MiB)  # 8 MiB left: two of new.bin's three pieces

    result = read(url_path(daemon, origin, "new.bin"))
    assert result.returncode == 0, (result.stderr, daemon.output()[-3000:])
    assert hashlib.sha256(result.stdout).hexdigest() == digest
    log = daemon.output()
    assert "event=disk_full" in log and "action=retry" in log
    assert "event=gc_reclaim reason=disk_full" in log
    assert "event=gc_evict_" in log  # cold.bin's pieces (or the whole task) made the room
    pieces = journaled_pieces(data)
    # Least recently used first: the first eviction takes cold.bin's pieces. Two writes of the
    # same piece may hit the full disk at once (the reader's and the readahead's), each reclaiming
    # room, so new.bin's already-read piece 0 may go too; the pieces written after the disk
    # filled are kept.
    evictions = [ln for ln in log.splitlines() if "event=gc_evict_" in ln]
    assert f"task={cold_task}" in evictions[0], evictions
    assert {1, 2} <= pieces.get(_task_of(data, "new.bin"), set()), (pieces, evictions)
    assert daemon.alive()


def _task_of(data: Path, name: str) -> str:
    """The ID of the task whose URL ends with ``name`` (from its metadata)."""
    for meta in data.glob("tasks/*/*/meta.json"):
        if f'/{name}"' in meta.read_text():
            return meta.parent.name
    raise AssertionError(f"no task for {name}")


def test_read_only_data_dir_gives_clear_errors_and_recovers(tmp_path, daemons, nginx_origin, make_file):
    www = tmp_path / "www"
    www.mkdir()
    cached_digest = make_file(www / "cached.bin", 6 * MiB, seed=84)
    digest = make_file(www / "new.bin", 6 * MiB, seed=85)
    origin = nginx_origin(www)
    data = tmp_path / "data"
    daemon = daemons(data)
    assert sha256_file(url_path(daemon, origin, "cached.bin")) == cached_digest
    out = tmp_path / "out.bin"
    get = [sys.executable, "-m", "dffs", "get", origin.url("/new.bin"), "-O", str(out), "--data-dir", str(data)]

    subprocess.run(["mount", "--bind", str(data), str(data)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(data)], check=True)
        result = read(url_path(daemon, origin, "new.bin"))
        assert result.returncode != 0 and b"Input/output error" in result.stderr
        assert "Read-only file system" in daemon.output().split("event=read_failed")[-1].splitlines()[0]
        got = subprocess.run(get, capture_output=True, text=True, timeout=READER_TIMEOUT)
        assert got.returncode == 1 and "Read-only file system" in got.stderr, got.stderr
        assert got.stderr.count("\n") == 1  # one line, no traceback
        assert sha256_file(url_path(daemon, origin, "cached.bin")) == cached_digest  # what is stored still reads
        assert daemon.alive()
    finally:
        subprocess.run(["umount", str(data)], capture_output=True)

    result = read(url_path(daemon, origin, "new.bin"))
    assert result.returncode == 0 and hashlib.sha256(result.stdout).hexdigest() == digest
    got = subprocess.run(get, capture_output=True, text=True, timeout=READER_TIMEOUT)
    assert got.returncode == 0, got.stderr
    assert sha256_file(out) == digest
    assert daemon.alive()


def test_removed_data_dir_gives_eio_and_recovers_when_it_is_back(tmp_path, daemons, nginx_origin, make_file):
    www = tmp_path / "www"
    www.mkdir()
    digest = make_file(www / "f.bin", 5 * MiB, seed=86)
    origin = nginx_origin(www)
    data = tmp_path / "data"
    daemon = daemons(data)
    subprocess.run(["rm", "-rf", str(data)], check=True)

    result = read(url_path(daemon, origin, "f.bin"))
    assert result.returncode != 0 and b"Input/output error" in result.stderr
    line = daemon.output().split("event=read_failed")[-1].splitlines()[0]
    assert f"cannot create it in {data}: No such file or directory" in line, line
    assert daemon.alive()

    data.mkdir()  # it is back (an operator restored it, a disk was remounted)
    result = read(url_path(daemon, origin, "f.bin"))
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == digest
    assert daemon.alive()


@pytest.mark.slow
def test_piece_corrupted_at_rest_at_a_parent_is_caught_before_it_leaves(tmp_path, nginx_origin, make_file):
    """Bytes damaged on a parent's disk (between two runs: bit rot, a stray write) are found by the
    parent's upload server, which verifies a piece before this process first serves it: it logs the
    corruption, drops the piece and refuses it; the child takes that piece elsewhere (the origin).
    Hosts: scheduler, origin, parent, child, each its own network namespace."""
    from cluster import Daemon, Process
    from netns import Network

    www = tmp_path / "www"
    www.mkdir()
    digest = make_file(www / "c.bin", 16 * MiB, seed=87)
    config = tmp_path / "daemon.toml"
    config.write_text("announce_interval = 1\nparent_wait = 2\nparent_rounds = 3\n")
    with Network() as net:
        hosts = {name: net.add_host(name) for name in ("sched", "origin", "parent", "child")}
        origin = nginx_origin(www, host=hosts["origin"].ip, port=8080, netns=hosts["origin"].netns)
        url = f"http://{origin.host}:8080/c.bin"
        sched = Process(
            ["scheduler", "--listen", f"{hosts['sched'].ip}:8002"],
            tmp_path / "scheduler.log",
            r"listening on (\S+):(\d+)",
            prefix=hosts["sched"].command([]),
        ).start()
        net.processes.append(sched.proc)
        started: list[Daemon] = []

        def daemon(name: str) -> Daemon:
            d = Daemon(
                tmp_path,
                name,
                f"{hosts['sched'].ip}:8002",
                ip=hosts[name].ip,
                prefix=hosts[name].command([]),
                extra=("--config", str(config), "--proxy-port", "-1", "--metrics-port", "-1"),
            ).start()
            net.processes.append(d.proc)
            started.append(d)
            return d

        def get(d: Daemon, out: Path) -> None:
            cmd = [sys.executable, "-m", "dffs", "get", url, "-O", str(out), "--data-dir", str(d.data_dir)]
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, (result.stderr, d.output()[-3000:])

        try:
            parent = daemon("parent")
            get(parent, tmp_path / "parent.out")
            (tmp_path / "parent.out").unlink()  # drop the hard link: the content file is the only copy
            parent.stop(signal.SIGTERM)  # a clean stop: the next run trusts the journal
            content = next((parent.data_dir / "tasks").glob("*/*/content"))
            with open(content, "r+b") as f:  # flip one byte of piece 2, at rest
                f.seek(2 * PIECE + 1234)
                byte = f.read(1)
                f.seek(2 * PIECE + 1234)
                f.write(bytes([byte[0] ^ 0xFF]))
            parent = daemon("parent")
            child = daemon("child")

            get(child, tmp_path / "child.out")
            assert sha256_file(tmp_path / "child.out") == digest
            parent_log, child_log = parent.output(), child.output()
            assert "piece=2 event=piece_corrupt action=drop" in parent_log
            assert "piece=2 event=upload_refused reason=corrupt" in parent_log
            # No damaged byte ever reached the child (its own digest check would have said so).
            assert [line for line in child_log.splitlines() if "digest" in line.lower() and "failed" in line] == []
            origin_bytes, peer_bytes = _done(child_log)
            assert peer_bytes > 0  # the parent served the rest of the file
            assert origin_bytes >= PIECE  # piece 2 came from elsewhere
            assert parent.alive() and child.alive()
        finally:
            for d in started:
                d.stop()
            sched.stop()


def _done(log: str) -> tuple[int, int]:
    import re

    match = re.search(r"event=download_done bytes=\d+ origin_bytes=(\d+) peer_bytes=(\d+)", log)
    assert match, log[-3000:]
    return int(match.group(1)), int(match.group(2))


def test_a_p2p_dffs_get_onto_a_full_data_dir_fails_at_once_with_the_cause(
    tmp_path, small_disk, nginx_origin, make_file
):
    """ENOSPC on the P2P path: a peer whose pieces come from another peer (not the origin) and whose data
    dir fills up fails its `dffs get` within the reader timeout, naming the cause; the daemon stays up
    and, once space is back, the same get succeeds from the swarm."""
    from cluster import Daemon, scheduler

    www = tmp_path / "www"
    www.mkdir()
    size = 24 * MiB + 3
    digest = make_file(www / "p.bin", size, seed=84)
    origin = nginx_origin(www)
    fill(small_disk / "filler", 24 * MiB)  # 16 MiB left on b's disk: not the 25 MiB the file needs
    started = []
    try:
        sched = scheduler(tmp_path)
        started.append(sched)
        address = f"127.0.0.1:{sched.match.group(2)}"
        seed, a = Daemon(tmp_path, "seed", address, seed=True), Daemon(tmp_path, "a", address)
        b = Daemon(tmp_path, "b", address)
        b.data_dir = small_disk / "data"
        b.argv[b.argv.index("--data-dir") + 1] = str(b.data_dir)
        for daemon in (seed, a, b):
            started.append(daemon)
            daemon.start()

        def get(daemon: Daemon, out: Path) -> subprocess.CompletedProcess:
            argv = [sys.executable, "-m", "dffs", "get", origin.url("/p.bin"), "-O", str(out)]
            argv += ["--data-dir", str(daemon.data_dir)]
            return subprocess.run(argv, capture_output=True, text=True, timeout=READER_TIMEOUT)

        assert get(a, tmp_path / "a.out").returncode == 0
        failed = get(b, tmp_path / "b.out")
        assert failed.returncode != 0 and "No space left on device" in failed.stderr, failed.stderr
        assert str(small_disk) in failed.stderr  # where
        assert b.alive()
        (small_disk / "filler").unlink()
        again = get(b, tmp_path / "b.out")
        assert again.returncode == 0, again.stderr
        assert sha256_file(tmp_path / "b.out") == digest
        origin.sync_log()
        assert origin.body_bytes("/p.bin", "GET") == size  # the seed's fetch only: b's pieces came from peers
    finally:
        for process in reversed(started):
            process.stop()
