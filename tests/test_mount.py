"""The lazy FUSE mount: a real `dffs mount` process, read with ordinary tools."""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import mmap
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cli import run_dffs, sha256_file
from mounts import MountProcess, force_unmount, is_mounted, journaled_pieces

MiB = 1024 * 1024
PIECE = 4 * MiB


@pytest.fixture
def www(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    return root


@pytest.fixture
def mount(tmp_path):
    """Factory: ``mount(*args, command=("mount",))`` -> a started MountProcess; always torn down."""
    made: list[MountProcess] = []

    def start(*args, name="mnt", command=("mount",)) -> MountProcess:
        m = MountProcess(tmp_path / name, tmp_path / f"{name}-data", *args, command=command)
        made.append(m)
        return m.start()

    yield start
    for m in made:
        m.stop()
        assert not is_mounted(m.mountpoint)


def origin_path(origin, path):
    return f"http/127.0.0.1:{origin.port}{path}"


def test_sha256_dd_and_mmap_through_the_mount(www, nginx_origin, make_file, mount):
    digest = make_file(www / "data.bin", 24 * MiB + 4321, seed=11)
    origin = nginx_origin(www)
    m = mount()
    path = m.mountpoint / origin_path(origin, "/data.bin")
    assert os.stat(path).st_size == 24 * MiB + 4321
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == digest

    original = (www / "data.bin").read_bytes()
    rng = random.Random(5)
    for _ in range(20):
        block = rng.randrange(0, (len(original) - 4096) // 4096)
        got = subprocess.run(
            ["dd", f"if={path}", "bs=4096", f"skip={block}", "count=1", "status=none"],
            capture_output=True,
            check=True,
        ).stdout
        assert got == original[block * 4096 : block * 4096 + 4096]

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for _ in range(50):
            off = rng.randrange(0, len(original) - 100)
            assert mm[off : off + 100] == original[off : off + 100]
        assert mm[-7:] == original[-7:]


def test_numpy_memmap_random_reads_on_a_cold_mount(www, nginx_origin, make_file, mount):
    make_file(www / "arr.bin", 16 * MiB, seed=12)
    origin = nginx_origin(www)
    m = mount("--prefetch", "none")
    expected = np.fromfile(www / "arr.bin", dtype=np.uint32)
    mapped = np.memmap(m.mountpoint / origin_path(origin, "/arr.bin"), dtype=np.uint32, mode="r")
    idx = np.random.default_rng(3).integers(0, expected.size, size=500)
    assert np.array_equal(mapped[idx], expected[idx])
    del mapped


def test_two_readers_cause_one_origin_fetch_per_piece(www, nginx_origin, make_file, mount):
    digest = make_file(www / "shared.bin", 32 * MiB, seed=13)
    origin = nginx_origin(www, limit_rate="16m")  # slow enough that both readers overlap
    m = mount()
    path = m.mountpoint / origin_path(origin, "/shared.bin")
    results = [None, None]

    def reader(i):
        results[i] = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True).stdout.split()[0]

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [digest, digest]
    origin.sync_log()
    # Every byte was fetched exactly once: the ranged GETs tile the file with no
    # overlap (a cold first read may split its piece into a few sub-ranges).
    spans = sorted(
        tuple(int(x) for x in g.range.removeprefix("bytes=").split("-")) for g in origin.requests("/shared.bin", "GET")
    )
    assert spans[0][0] == 0 and spans[-1][1] == 32 * MiB - 1, spans
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(spans)), spans
    assert origin.body_bytes("/shared.bin", "GET") == 32 * MiB


def test_a_cold_4k_read_deep_in_a_big_file_costs_at_most_one_piece(www, nginx_origin, mount):
    size = 1024 * MiB
    marker = os.urandom(4096)
    with open(www / "huge.bin", "wb") as f:  # sparse: nginx serves zeros cheaply
        f.truncate(size)
        f.seek(900 * MiB)
        f.write(marker)
    origin = nginx_origin(www)
    m = mount()
    path = m.mountpoint / origin_path(origin, "/huge.bin")
    got = subprocess.run(
        ["dd", f"if={path}", "bs=4096", f"skip={900 * 256}", "count=1", "status=none"], capture_output=True, check=True
    ).stdout
    assert got == marker
    # The read's bytes came first; the rest of its piece follows in the background. A prefetch,
    # had the read scheduled one, would start alongside that and reach the origin before the
    # piece is complete. So: wait for the piece, unmount (a fetch still running is cut off and
    # nginx logs it), then count everything the origin saw.
    piece = 900 * MiB // PIECE
    wait_for(lambda: list(journaled_pieces(m.data_dir).values()) == [{piece}], what="the cold piece to complete")
    assert m.stop() == 0, m.output()[-3000:]
    origin.sync_log()
    first = piece * PIECE
    gets = origin.requests("/huge.bin", "GET")
    spans = [tuple(int(x) for x in g.range.removeprefix("bytes=").split("-")) for g in gets]
    assert spans and all(first <= a <= b < first + PIECE for a, b in spans), spans  # only the one piece
    assert origin.body_bytes("/huge.bin") == PIECE


def test_origin_killed_mid_read_gives_eio_then_recovers(www, nginx_origin, make_file, mount, tmp_path):
    digest = make_file(www / "slow.bin", 32 * MiB, seed=14)
    origin = nginx_origin(www, limit_rate="1m")
    config = tmp_path / "mount.toml"
    config.write_text("attempts = 2\norigin_read_timeout = 2\nconnect_timeout = 1\n")
    m = mount("--read-timeout", "4", "--config", str(config))
    path = m.mountpoint / origin_path(origin, "/slow.bin")
    reader = subprocess.Popen(["sha256sum", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    origin.wait_for_requests(2, timeout=10)  # the HEAD and the first piece GETs are under way
    origin.kill()
    # Bounded by a condition, not a stopwatch: the reader gets EIO (communicate's timeout only
    # guards against a hang) and the mount says the read failed or timed out.
    _, err = reader.communicate(timeout=60)
    assert reader.returncode != 0 and "Input/output error" in err, err
    assert m.alive() and os.path.isdir(m.mountpoint / "http")  # the daemon lives on
    assert "event=read_failed" in m.output() or "event=read_timeout" in m.output()
    origin.start()
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == digest


def test_nginx_autoindex_listing_makes_no_per_entry_requests(www, nginx_origin, mount):
    d = www / "many"
    d.mkdir()
    for i in range(10_000):
        (d / f"f{i:05d}.txt").write_bytes(b"x" * (i % 7))
    (d / "sub").mkdir()
    origin = nginx_origin(www)
    m = mount()
    listing = subprocess.run(
        ["ls", "-l", str(m.mountpoint / origin_path(origin, "/many"))], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(listing) == 10_002  # "total" line + entries
    sizes = {line.split()[-1]: int(line.split()[4]) for line in listing[1:]}
    assert sizes["f00006.txt"] == 6 and sizes["f00007.txt"] == 0
    assert listing[-1].startswith("d")  # sub is a directory
    origin.sync_log()
    methods = [(r.method, r.path) for r in origin.requests()]
    assert ("HEAD", "/many/f00006.txt") not in methods
    assert len([r for r in origin.requests() if r.method == "GET"]) == 1  # the one listing
    assert (m.mountpoint / origin_path(origin, "/many/f00006.txt")).read_bytes() == b"x" * 6


def test_named_source_tree(www, nginx_origin, make_file, mount):
    (www / "ds" / "train").mkdir(parents=True)
    digest = make_file(www / "ds" / "train" / "part-0.bin", 5 * MiB, seed=15)
    origin = nginx_origin(www)
    m = mount("--source", f"dataset={origin.url('/ds/')}")
    assert sorted(os.listdir(m.mountpoint)) == ["dataset", "http", "https"]
    assert os.listdir(m.mountpoint / "dataset") == ["train"]
    assert sha256_file(m.mountpoint / "dataset" / "train" / "part-0.bin") == digest
    with pytest.raises(FileNotFoundError):
        os.stat(m.mountpoint / "dataset" / "nope.bin")


def test_manifest_lays_out_files_without_listing_calls(www, nginx_origin, make_file, mount, tmp_path):
    digest = make_file(www / "real.bin", 3 * MiB, seed=16)
    origin = nginx_origin(www)
    manifest = tmp_path / "dataset.jsonl"
    with open(manifest, "w") as f:
        f.write(
            json.dumps(
                {
                    "path": "data/real.bin",
                    "url": origin.url("/real.bin"),
                    "size": 3 * MiB,
                    "digest": f"sha256:{digest}",
                    "mtime": 1_700_000_000,
                }
            )
            + "\n"
        )
        for i in range(10_000):
            f.write(json.dumps({"path": f"data/shard/{i:05d}.bin", "url": origin.url(f"/nope/{i}"), "size": i}) + "\n")
    m = mount("--manifest", str(manifest))
    listing = subprocess.run(
        ["ls", "-l", str(m.mountpoint / "data" / "shard")], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(listing) == 10_001
    assert os.stat(m.mountpoint / "data" / "shard" / "09999.bin").st_size == 9999
    assert os.stat(m.mountpoint / "data" / "real.bin").st_mtime == 1_700_000_000
    origin.sync_log()
    assert origin.requests() == []  # not one request for all of that
    assert sha256_file(m.mountpoint / "data" / "real.bin") == digest


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"path": "a", "url": "http://h/a", "size": 1}\n{"path": "b", "url": "http://h/b"}\n', "line 2"),
        ('{"path": "../etc/passwd", "url": "http://h/a", "size": 1}\n', "line 1"),
        ("not json\n", "line 1: not JSON"),
        ('{"path": "a", "url": "http://h/a", "size": 1}\n{"path": "a/b", "url": "http://h/b", "size": 1}\n', "line 2"),
        ('{"path": "x", "url": "ftp://h/a", "size": 1}\n', "unsupported URL scheme"),
        ('{"path": "http", "url": "http://h/a", "size": 1}\n', "collides"),
    ],
)
def test_malformed_manifest_refuses_to_mount(tmp_path, content, message):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(content)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = run_dffs("mount", str(mnt), "--data-dir", str(tmp_path / "d"), "--manifest", str(manifest), timeout=30)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not is_mounted(mnt)


def test_bad_names_and_unknown_hosts_fail_fast(www, nginx_origin, mount):
    (www / "a.txt").write_text("hello")
    origin = nginx_origin(www)
    m = mount("--read-timeout", "5")
    cases = [
        m.mountpoint / "http" / "bad host!" / "x",
        m.mountpoint / "http" / "h:99999" / "x",
        m.mountpoint / "nothing-here",
        m.mountpoint / origin_path(origin, "/%2e%2e/etc/passwd"),
        m.mountpoint / origin_path(origin, "/missing.txt"),
    ]
    for path in cases:
        with pytest.raises(FileNotFoundError):
            os.stat(path)
    with pytest.raises(OSError) as info:
        os.stat(m.mountpoint / "http" / "no-such-host.invalid" / "file.bin")
    assert info.value.errno in (errno.ENOENT, errno.EIO)
    # Fast means: refused without asking anyone, or after one answer; never by waiting out a timeout.
    assert "event=lookup_timeout" not in m.output() and "event=read_timeout" not in m.output(), m.output()[-3000:]
    origin.sync_log()
    assert sorted((r.method, r.path) for r in origin.requests()) == [("HEAD", "/%252e%252e"), ("HEAD", "/missing.txt")]
    assert (m.mountpoint / origin_path(origin, "/a.txt")).read_text() == "hello"  # still serving


def test_read_only(www, nginx_origin, mount):
    (www / "a.txt").write_text("hello")
    origin = nginx_origin(www)
    m = mount()
    target = m.mountpoint / origin_path(origin, "/a.txt")
    for attempt in (
        lambda: open(target, "w"),
        lambda: open(target, "a"),
        lambda: open(m.mountpoint / origin_path(origin, "/new.txt"), "w"),
        lambda: os.mkdir(m.mountpoint / "x"),
    ):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS
    assert target.read_text() == "hello"


def test_stale_mount_is_cleared_and_sigint_unmounts(www, nginx_origin, mount, tmp_path):
    (www / "a.txt").write_text("hello")
    origin = nginx_origin(www)
    first = mount(name="stale")
    first.kill9()
    with pytest.raises(OSError) as info:
        os.listdir(first.mountpoint)
    assert info.value.errno == errno.ENOTCONN  # a crashed mount's leftover
    second = MountProcess(first.mountpoint, tmp_path / "stale-data")
    try:
        second.start()
        assert (second.mountpoint / origin_path(origin, "/a.txt")).read_text() == "hello"
        code = second.stop(signal.SIGINT)  # as Ctrl-C sends
        assert code == 0, second.output()
        assert not is_mounted(second.mountpoint)
        assert "event=stale_mount_cleared" in second.output()
    finally:
        second.stop()
        force_unmount(first.mountpoint)


def test_daemon_with_mount_flag(www, nginx_origin, mount):
    (www / "a.txt").write_text("via daemon")
    origin = nginx_origin(www)
    m = mount(command=("daemon",))
    assert (m.mountpoint / origin_path(origin, "/a.txt")).read_text() == "via daemon"


def test_s3_source_tree_through_moto(s3, mount):
    """--source NAME=s3://bucket/prefix, listed with ListObjectsV2 and read with
    signed ranged GETs, against moto's S3 server (the S3-protocol server this
    machine can run; see tests/s3_server.py)."""
    from s3_server import BLOB_KEY, BUCKET

    m = mount("--source", f"bucket={'s3://' + BUCKET + '/'}")
    root = m.mountpoint / "bucket"
    assert {"data", "tree", "many"} <= set(os.listdir(root))
    assert sorted(os.listdir(root / "tree")) == ["a.txt", "other", "sub"]
    assert (root / "tree" / "sub" / "b.txt").read_text() == "tree/sub/b.txt"
    assert len(os.listdir(root / "many")) == 1100  # more than one ListObjectsV2 page
    assert sha256_file(root / BLOB_KEY) == hashlib.sha256(s3.blob).hexdigest()
    with open(root / BLOB_KEY, "rb") as f:
        f.seek(len(s3.blob) - 10)
        assert f.read() == s3.blob[-10:]
    with pytest.raises(FileNotFoundError):
        os.stat(root / "tree" / "missing.txt")


def wait_for(predicate, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_prefetch_whole_and_manifest_digests(www, nginx_origin, make_file, mount, tmp_path):
    good = make_file(www / "good.bin", 12 * MiB + 1, seed=21)
    make_file(www / "bad.bin", 5 * MiB, seed=22)
    origin = nginx_origin(www)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps(
            {"path": "good.bin", "url": origin.url("/good.bin"), "size": 12 * MiB + 1, "digest": f"sha256:{good}"}
        )
        + "\n"
        + json.dumps(
            {"path": "bad.bin", "url": origin.url("/bad.bin"), "size": 5 * MiB, "digest": "sha256:" + "0" * 64}
        )
        + "\n"
    )
    m = mount("--manifest", str(manifest), "--prefetch", "whole")
    with open(m.mountpoint / "good.bin", "rb") as f:
        first = f.read(4096)
    assert first == (www / "good.bin").read_bytes()[:4096]
    # one small read, and the whole file follows in the background, checked against the manifest
    wait_for(lambda: "event=digest_verified" in m.output(), what="the whole file and its digest check")
    origin.sync_log()
    assert origin.body_bytes("/good.bin", "GET") == 12 * MiB + 1
    assert "ok=True" in m.output()

    with open(m.mountpoint / "bad.bin", "rb") as f:
        f.read(4096)  # served: bytes arrive before the whole file can be checked
    wait_for(lambda: "event=digest_mismatch" in m.output(), what="the digest mismatch")
    with pytest.raises(OSError) as info:
        with open(m.mountpoint / "bad.bin", "rb") as f:
            f.seek(2 * MiB)
            f.read(4096)
    assert info.value.errno == errno.EIO
    assert sha256_file(m.mountpoint / "good.bin") == good  # the other file is unaffected


def test_mount_sets_kernel_readahead(www, nginx_origin, mount):
    from dffs.fs.mount import mountinfo_entry

    m = mount()
    device = mountinfo_entry(m.mountpoint)[2]
    assert (Path("/sys/class/bdi") / device / "read_ahead_kb").read_text().strip() == "512"


def test_unmount_logs_what_the_mount_did(www, nginx_origin, mount):
    (www / "a.txt").write_text("hello")
    origin = nginx_origin(www)
    m = mount()
    assert (m.mountpoint / origin_path(origin, "/a.txt")).read_text() == "hello"
    with pytest.raises(FileNotFoundError):
        os.stat(m.mountpoint / origin_path(origin, "/missing"))
    assert m.stop() == 0
    line = next(line for line in m.output().splitlines() if "event=unmounted" in line)
    assert "reads=1" in line and "read_bytes=5" in line and "read_errors=0" in line
    assert "origin_metadata_requests=2" in line  # one HEAD for a.txt, one for missing
