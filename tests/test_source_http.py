"""The http Source against real servers: reuse, validators, listings, chunked bodies."""

from __future__ import annotations

import hashlib

import pytest
from origins import Behavior

from dffs.errors import SourceChanged, SourceError
from dffs.source import HttpOptions, HttpSource, Validators

MiB = 1024 * 1024


@pytest.fixture
async def source():
    src = HttpSource(HttpOptions(read_timeout=2, attempts=2, backoff_initial=0.01))
    yield src
    await src.aclose()


@pytest.fixture
def site(tmp_path, nginx_origin, make_file):
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    digest = make_file(root / "f.bin", 3 * MiB + 5, seed=1)
    make_file(root / "sub" / "g.bin", 10, seed=2)
    return nginx_origin(root), root, digest


async def test_stat_and_ranged_reads_reuse_one_connection(source, site):
    origin, root, digest = site
    url = origin.url("/f.bin")
    stat = await source.stat(url)
    assert stat.content_length == 3 * MiB + 5 and stat.accepts_ranges and stat.etag
    buf = bytearray(stat.content_length)
    view = memoryview(buf)
    for offset in range(0, len(buf), MiB):
        await source.read_range(url, offset, view[offset : offset + MiB], validators=Validators(etag=stat.etag))
    assert hashlib.sha256(buf).hexdigest() == digest
    assert source.pool.connections_opened == 1
    await origin.async_sync_log()
    gets = origin.requests("/f.bin", "GET")
    assert all(g.if_range == stat.etag and g.status == 206 for g in gets)


async def test_conditional_stat(source, site):
    origin, _, _ = site
    url = origin.url("/f.bin")
    stat = await source.stat(url)
    again = await source.stat(url, validators=Validators(etag=stat.etag, last_modified=stat.last_modified))
    assert again.not_modified
    other = await source.stat(url, validators=Validators(etag='"stale"'))
    assert not other.not_modified and other.etag == stat.etag


async def test_listing_from_nginx_autoindex(source, site):
    origin, _, _ = site
    entries = {e.name: e async for e in source.list(origin.url("/"))}
    assert set(entries) == {"f.bin", "sub"}
    assert entries["f.bin"].size == 3 * MiB + 5
    assert entries["sub"].is_dir
    inner = [e.name async for e in source.list(entries["sub"].url)]
    assert inner == ["g.bin"]
    with pytest.raises(SourceError, match="404"):
        [e async for e in source.list(origin.url("/missing/"))]


async def test_object_changed_between_pieces(source, faulty_origin):
    url = faulty_origin.add("/o", b"a" * 1000, etag="v1")
    stat = await source.stat(url)
    faulty_origin.add("/o", b"b" * 1000, etag="v2")  # replaced at the origin
    with pytest.raises(SourceChanged):
        await source.read_range(url, 100, memoryview(bytearray(100)), validators=Validators(etag=stat.etag))


async def test_chunked_stream(source, faulty_origin):
    body = bytes(range(256)) * 1000
    url = faulty_origin.add("/c", body, behavior=Behavior.chunked(chunk_size=1000))
    got = bytearray()
    buf = memoryview(bytearray(4096))
    async with source.open_stream(url) as stream:
        while n := await stream.readinto(buf):
            got += buf[:n]
    assert bytes(got) == body


async def test_stream_from_offset_checks_content_range(source, faulty_origin):
    url = faulty_origin.add("/s", b"0123456789" * 100)
    buf = memoryview(bytearray(1000))
    async with source.open_stream(url, 990) as stream:
        n = await stream.readinto(buf)
        assert bytes(buf[:n]) == b"0123456789"
        assert await stream.readinto(buf) == 0
    faulty_origin.set_behavior("/s", Behavior.bad_content_range())
    with pytest.raises(SourceError, match="origin sent"):
        async with source.open_stream(url, 500):
            pass


async def test_chunked_body_whose_head_arrives_alone():
    """The response head in one TCP segment, the chunked body later: nothing
    may mistake the empty gap for the end of the stream (a real bug once)."""
    import functools

    import trio
    import trio.testing

    body = b"x" * 5000

    async def server(stream):
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        # The head goes out alone: the body follows only once the client has taken the head and
        # blocked for more (every task of this trio run blocked, no I/O ready), whatever the timing.
        await trio.testing.wait_all_tasks_blocked()
        await stream.send_all(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, server, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        src = HttpSource(HttpOptions(attempts=1))
        got = bytearray()
        buf = memoryview(bytearray(1024))
        async with src.open_stream(f"http://127.0.0.1:{port}/c") as stream:
            while n := await stream.readinto(buf):
                got += buf[:n]
        await src.aclose()
        nursery.cancel_scope.cancel()
    assert bytes(got) == body
