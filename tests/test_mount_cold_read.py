"""The cold read path through a real `dffs mount`: large FUSE requests, and readahead pieces
pushed into the kernel's page cache (notify_store), read back with ordinary tools."""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import subprocess

import pytest
from mounts import MountProcess, is_mounted

MiB = 1024 * 1024
PIECE = 4 * MiB


@pytest.fixture
def mount(tmp_path):
    """Factory: ``mount(*args)`` -> a started MountProcess; always torn down."""
    made: list[MountProcess] = []

    def start(*args, name="mnt") -> MountProcess:
        m = MountProcess(tmp_path / name, tmp_path / f"{name}-data", *args)
        made.append(m)
        return m.start()

    yield start
    for m in made:
        m.stop()
        assert not is_mounted(m.mountpoint)


def unmount_counters(m: MountProcess) -> dict[str, int]:
    """The counters of the mount's ``event=unmounted`` line (after ``m.stop()``)."""
    line = next(line for line in m.output().splitlines() if "event=unmounted" in line)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def test_sequential_read_gets_pushed_pages_with_the_right_bytes(tmp_path, nginx_origin, make_file, mount):
    www = tmp_path / "www"
    size = 10 * PIECE + 1234  # a short last piece: the push ends exactly at the file's end
    digest = make_file(www / "big.bin", size, seed=3)
    origin = nginx_origin(www)
    config = tmp_path / "mount.toml"
    config.write_text("push_pieces = true\n")
    m = mount("--config", str(config))
    path = m.mountpoint / f"http/127.0.0.1:{origin.port}/big.bin"
    out = subprocess.run(["dd", f"if={path}", "bs=1M", "status=none"], capture_output=True, check=True, timeout=120)
    assert hashlib.sha256(out.stdout).hexdigest() == digest
    assert m.stop() == 0
    counters = unmount_counters(m)
    # Some bytes reached the reader only through the page cache (pushed, never asked for):
    # the digest above covers them.
    assert counters["pushed_bytes"] > 0
    assert counters["read_bytes"] < size
    assert counters["read_errors"] == 0


def test_by_default_nothing_is_pushed_and_every_byte_is_a_read_request(tmp_path, nginx_origin, make_file, mount):
    www = tmp_path / "www"
    size = 6 * PIECE
    digest = make_file(www / "big.bin", size, seed=4)
    origin = nginx_origin(www)
    m = mount()
    path = m.mountpoint / f"http/127.0.0.1:{origin.port}/big.bin"
    out = subprocess.run(["dd", f"if={path}", "bs=1M", "status=none"], capture_output=True, check=True, timeout=120)
    assert hashlib.sha256(out.stdout).hexdigest() == digest
    assert m.stop() == 0
    counters = unmount_counters(m)
    assert counters["pushed_bytes"] == 0 and counters["read_bytes"] >= size


def test_one_mib_requests_across_a_piece_boundary_and_at_the_end(tmp_path, nginx_origin, make_file, mount):
    """O_DIRECT reads reach the mount as they are asked (no page cache): each 1 MiB pread is one
    FUSE request (max_pages negotiated at 256, not 32), answered right across pieces and at EOF."""
    www = tmp_path / "www"
    size = 3 * PIECE + 300 * 1024 + 7
    make_file(www / "f.bin", size, seed=5)
    original = (www / "f.bin").read_bytes()
    origin = nginx_origin(www)
    m = mount("--prefetch", "none")
    path = m.mountpoint / f"http/127.0.0.1:{origin.port}/f.bin"
    offsets = [PIECE - 512 * 1024, 2 * PIECE - 4096, 3 * PIECE - 1 * MiB + 8192, size - (size % 4096)]
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        with mmap.mmap(-1, MiB) as buffer:  # page-aligned, as O_DIRECT wants
            for offset in offsets:
                got = os.preadv(fd, [buffer], offset)
                want = original[offset : offset + MiB]
                assert got == len(want), offset
                assert buffer[:got] == want, offset
    finally:
        os.close(fd)
    assert m.stop() == 0
    counters = unmount_counters(m)
    assert counters["read_errors"] == 0
    assert counters["reads"] == len(offsets)  # one request per 1 MiB pread


def test_after_a_remount_readahead_verifies_pieces_on_disk_ahead_of_the_reader(
    tmp_path, nginx_origin, make_file, mount
):
    """A restarted mount has the pieces on disk but has verified none: the readahead reads and
    hashes them ahead (in threads), so a sequential reader does not wait for each piece's disk
    read in turn. The origin sends nothing the second time."""
    www = tmp_path / "www"
    size = 8 * PIECE
    digest = make_file(www / "big.bin", size, seed=6)
    origin = nginx_origin(www)
    first = mount()
    path = first.mountpoint / f"http/127.0.0.1:{origin.port}/big.bin"
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"], check=True, timeout=120)
    assert first.stop() == 0
    origin.clear_log()
    again = mount()  # the same name: the same data dir
    out = subprocess.run(["dd", f"if={path}", "bs=1M", "status=none"], capture_output=True, check=True, timeout=120)
    assert hashlib.sha256(out.stdout).hexdigest() == digest
    assert again.stop() == 0
    assert origin.body_bytes("/big.bin") == 0
    assert unmount_counters(again)["prefetched"] > 0
