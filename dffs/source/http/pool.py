"""Keep-alive HTTP/1.1 client connections per origin (scheme, host, port), for both clients of origins.

The back-to-source client (``connection.HttpConnection``: bodies received straight into piece buffers) and the
proxy's passthrough relay (``dffs.proxy.upstream``: h11 events relayed as they come) speak differently over a
connection, but opening one (TCP, TLS, the connect timeout) and keeping idle ones for reuse is the same job: it
lives here once. What is said over the connection stays with each client.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import trio

from dffs.errors import RetryableSourceError, SourceError
from dffs.source.http.protocol import Target

OriginKey = tuple[str, str, int]


class PooledConnection(Protocol):
    """What the pool needs of a connection; the rest is the client's business."""

    origin_key: OriginKey
    #: When the pool last took it back (time.monotonic()).
    idle_since: float

    @property
    def reusable(self) -> bool:
        """Whether its last exchange ended cleanly and the server keeps it open."""
        ...

    async def aclose(self) -> None: ...


class ConnectTimeout(RetryableSourceError):
    """TCP connect and TLS handshake took longer than the connect timeout (the proxy answers 504)."""


async def open_stream(
    target: Target, *, connect_timeout: float, ssl_context: ssl.SSLContext | None = None
) -> trio.abc.Stream:
    """TCP (trio sets TCP_NODELAY) and, for https, TLS with the host's name checked (default: the system's CAs).

    Failures are SourceErrors naming the host; all are retryable except a certificate that does not verify,
    which will not verify on a retry either.
    """
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(target.host, target.port)
            if target.scheme == "https":
                context = ssl_context or ssl.create_default_context()
                stream = trio.SSLStream(stream, context, server_hostname=target.host, https_compatible=True)
                await stream.do_handshake()
    except BaseException as exc:
        if stream is not None:  # never leave a half-open connection behind
            await trio.aclose_forcefully(stream)
        if isinstance(exc, trio.TooSlowError):
            raise ConnectTimeout(f"connecting to {target.host_header} timed out after {connect_timeout:g}s") from None
        if isinstance(exc, OSError):
            raise RetryableSourceError(f"cannot connect to {target.host_header}: {reason(exc)}") from None
        if isinstance(exc, trio.BrokenResourceError):
            cause = exc.__cause__ or exc
            error = SourceError if isinstance(cause, ssl.SSLCertVerificationError) else RetryableSourceError
            raise error(f"TLS handshake with {target.host_header} failed: {cause}") from None
        raise
    return stream


C = TypeVar("C", bound=PooledConnection)


class ConnectionPool(Generic[C]):
    """Idle connections by origin, most recently used first; ``wrap`` makes a client's connection of a new stream.

    trio runs every task on one thread, so no locking is needed: checkout and
    checkin never await between reading and changing the idle lists.
    """

    def __init__(
        self,
        wrap: Callable[[Target, trio.abc.Stream], C],
        *,
        connect_timeout: float,
        max_idle_per_origin: int = 16,
        idle_timeout: float = 30.0,
        ssl_context_factory: Callable[[], ssl.SSLContext] = ssl.create_default_context,
    ):
        self._wrap = wrap
        self.connect_timeout = connect_timeout
        self.max_idle_per_origin = max_idle_per_origin
        #: Idle connections older than this are closed rather than reused: servers drop them (nginx after 75 s).
        self.idle_timeout = idle_timeout
        self._ssl_context_factory = ssl_context_factory
        self._ssl_context: ssl.SSLContext | None = None
        self._idle: dict[OriginKey, list[C]] = {}
        self.connections_opened = 0

    async def checkout(self, target: Target, *, fresh: bool = False) -> C:
        """An idle connection to the target's origin, else a new one; ``fresh``: always a new one."""
        idle = self._idle.get(target.origin_key)
        now = time.monotonic()
        while idle and not fresh:
            conn = idle.pop()
            if now - conn.idle_since < self.idle_timeout:
                return conn
            await conn.aclose()
        if target.scheme == "https" and self._ssl_context is None:
            # Built on first https use: loading the CA bundle costs ~10 ms.
            self._ssl_context = self._ssl_context_factory()
        self.connections_opened += 1
        stream = await open_stream(target, connect_timeout=self.connect_timeout, ssl_context=self._ssl_context)
        return self._wrap(target, stream)

    async def checkin(self, conn: C) -> None:
        """Take a connection back after its exchange; it is closed unless reusable."""
        idle = self._idle.setdefault(conn.origin_key, [])
        if conn.reusable and len(idle) < self.max_idle_per_origin:
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            await conn.aclose()

    async def discard_idle(self, origin_key: OriginKey) -> None:
        """Close an origin's idle connections (after one turned out stale, the rest likely are)."""
        for conn in self._idle.pop(origin_key, []):
            await conn.aclose()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                await conn.aclose()
        self._idle.clear()


def reason(exc: BaseException) -> str:
    """An OS error's words without errno ("Connection refused"), looking through trio's wrappers: the
    BrokenResourceError of a stream, and open_tcp_stream's "all attempts failed" over one error per address."""
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
    if isinstance(cause, OSError) and isinstance(cause.__cause__, BaseExceptionGroup):
        errnos = {e.errno for e in cause.__cause__.exceptions if isinstance(e, OSError) and e.errno}
        words = sorted(os.strerror(n) for n in errnos)
        if words:
            return "; ".join(words)
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause) or type(cause).__name__
