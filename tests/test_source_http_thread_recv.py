"""Piece-sized bodies received in a worker thread (one blocking recv(MSG_WAITALL)), against real
origins: the bytes, keep-alive afterwards, silence as a timeout, and cancellation mid-body."""

from __future__ import annotations

import hashlib
import os

import pytest
import trio
from origins import Behavior

from dffs.errors import SourceError
from dffs.source import HttpOptions, HttpSource
from dffs.source.http.connection import THREAD_RECV_MIN

MiB = 1024 * 1024
SIZE = 6 * MiB + 123


@pytest.fixture
async def source():
    src = HttpSource(HttpOptions(read_timeout=1, attempts=1, backoff_initial=0.01))
    yield src
    await src.aclose()


async def test_piece_sized_reads_are_exact_and_keep_the_connection(source, tmp_path, nginx_origin, make_file):
    root = tmp_path / "www"
    make_file(root / "f.bin", SIZE, seed=7)
    original = (root / "f.bin").read_bytes()
    origin = nginx_origin(root)
    url = origin.url("/f.bin")
    assert 4 * MiB >= THREAD_RECV_MIN
    for offset, length in ((0, 4 * MiB), (4 * MiB, SIZE - 4 * MiB), (MiB + 1, 3 * MiB)):
        buffer = memoryview(bytearray(length))
        await source.read_range(url, offset, buffer)
        assert hashlib.sha256(buffer).digest() == hashlib.sha256(original[offset : offset + length]).digest()
    # The socket went back to non-blocking mode and stayed reusable: one connection for all three.
    connections = {entry.connection for entry in origin.requests("/f.bin")}
    assert len(connections) == 1


async def test_silence_mid_piece_is_a_timeout_not_a_hang(source, faulty_origin):
    faulty_origin.add("/s.bin", os.urandom(SIZE), behavior=Behavior.stall(after=100_000))
    buffer = memoryview(bytearray(4 * MiB))
    with trio.fail_after(30):  # a hang guard: read_timeout is 1 s
        with pytest.raises(SourceError, match="no data from the origin"):
            await source.read_range(faulty_origin.url("/s.bin"), 0, buffer)


async def test_cancelled_mid_piece_returns_and_the_next_read_works(faulty_origin):
    # A silence timeout far beyond the hang guard: only the socket's shutdown can end the receive in time.
    source = HttpSource(HttpOptions(read_timeout=120, attempts=1))
    body = os.urandom(SIZE)
    faulty_origin.add("/c.bin", body, behavior=Behavior.stall(after=200_000, times=1))
    buffer = memoryview(bytearray(4 * MiB))
    with trio.fail_after(30):  # the cancellation must not wait for the origin (it never sends more)
        with trio.move_on_after(0.3) as scope:
            await source.read_range(faulty_origin.url("/c.bin"), 0, buffer)
    assert scope.cancelled_caught
    again = memoryview(bytearray(4 * MiB))
    with trio.fail_after(30):
        await source.read_range(faulty_origin.url("/c.bin"), 0, again)
    await source.aclose()
    assert bytes(again) == body[: 4 * MiB]
