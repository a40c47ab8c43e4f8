"""The keep-alive pool both HTTP clients share (dffs/source/http/pool.py), against a real TCP server on loopback.

The pool's connections here are the smallest thing the pool accepts (``_Plain``), so what is checked is the pool:
when it reuses, opens, closes and refuses. The clients on top (HttpSource, the proxy's relay) are tested with real
origins in test_source_http.py, test_https.py and test_proxy.py.
"""

from __future__ import annotations

import functools

import pytest
import trio

from dffs.errors import SourceError
from dffs.source.http.pool import ConnectionPool, open_stream
from dffs.source.http.protocol import Target, parse_target


class _Plain:
    """A pooled connection that says nothing; ``reusable`` is set by the test."""

    def __init__(self, target: Target, stream: trio.abc.Stream):
        self.origin_key = target.origin_key
        self.stream = stream
        self.idle_since = 0.0
        self.reusable = True
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True
        await trio.aclose_forcefully(self.stream)


class _Server:
    """Accepts connections and records, for each, whether the client closed it."""

    def __init__(self) -> None:
        self.accepted = 0
        self.closed_by_client = 0
        self.port = 0
        self._changed = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        self._poke()
        async with stream:
            while await stream.receive_some(1024):
                pass
        self.closed_by_client += 1
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_closed(self, count: int) -> None:
        while self.closed_by_client < count:
            await self._changed.wait()


@pytest.fixture
async def server(nursery):
    srv = _Server()
    listeners = await nursery.start(functools.partial(trio.serve_tcp, srv.handle, 0, host="127.0.0.1"))
    srv.port = listeners[0].socket.getsockname()[1]
    return srv


def _pool(**kwargs) -> ConnectionPool[_Plain]:
    return ConnectionPool(_Plain, connect_timeout=5, **kwargs)


async def test_a_reusable_connection_is_reused_and_a_spent_one_closed(server):
    pool = _pool()
    target = parse_target(f"http://127.0.0.1:{server.port}/a")
    first = await pool.checkout(target)
    await pool.checkin(first)
    again = await pool.checkout(parse_target(f"http://127.0.0.1:{server.port}/other/path"))
    assert again is first and pool.connections_opened == 1 and server.accepted == 1
    again.reusable = False  # e.g. the server said Connection: close
    await pool.checkin(again)
    assert again.closed
    await server.wait_closed(1)
    fresh = await pool.checkout(target)
    assert fresh is not first and pool.connections_opened == 2
    await pool.aclose()
    await fresh.aclose()


async def test_fresh_idle_timeout_and_the_idle_cap(server):
    target = parse_target(f"http://127.0.0.1:{server.port}/")
    pool = _pool(max_idle_per_origin=1)
    a, b = await pool.checkout(target), await pool.checkout(target)
    await pool.checkin(a)
    await pool.checkin(b)  # over the cap of one idle connection: closed
    assert not a.closed and b.closed
    c = await pool.checkout(target, fresh=True)  # never the idle one
    assert c is not a and pool.connections_opened == 3
    await pool.checkin(c)  # the cap is full again
    assert c.closed
    await pool.aclose()
    assert a.closed
    await server.wait_closed(3)

    stale = _pool(idle_timeout=0)  # every idle connection has outlived its timeout
    d = await stale.checkout(target)
    await stale.checkin(d)
    e = await stale.checkout(target)
    assert e is not d and d.closed and stale.connections_opened == 2
    await e.aclose()
    await stale.aclose()


async def test_discard_idle_closes_only_that_origins_connections(server, nursery):
    other = _Server()
    listeners = await nursery.start(functools.partial(trio.serve_tcp, other.handle, 0, host="127.0.0.1"))
    here = parse_target(f"http://127.0.0.1:{server.port}/")
    there = parse_target(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/")
    pool = _pool()
    a, b = await pool.checkout(here), await pool.checkout(there)
    await pool.checkin(a)
    await pool.checkin(b)
    await pool.discard_idle(here.origin_key)
    assert a.closed and not b.closed
    assert await pool.checkout(there) is b
    await b.aclose()
    await pool.aclose()


async def test_connect_failures_are_source_errors_naming_the_host():
    with trio.socket.socket() as sock:  # a port nobody listens on: bound, never listening
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        target = parse_target(f"http://127.0.0.1:{port}/")
        with pytest.raises(SourceError, match=rf"cannot connect to 127\.0\.0\.1:{port}: Connection refused") as info:
            await _pool().checkout(target)
    assert info.value.retryable


async def test_a_tls_handshake_with_a_plain_http_server_fails_cleanly(nursery):
    answered = trio.Event()

    async def plain_http(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(1024)  # the ClientHello
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        answered.set()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, plain_http, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(SourceError, match=rf"TLS handshake with 127\.0\.0\.1:{port} failed") as info:
        await open_stream(parse_target(f"https://127.0.0.1:{port}/"), connect_timeout=5)
    assert info.value.retryable  # not a certificate verdict: the server spoke no TLS
    await answered.wait()
