"""Keep-alive connection reuse, per origin (scheme, host, port)."""

from __future__ import annotations

import ssl
import time
from collections import defaultdict
from collections.abc import Callable

from dffs.source.http.connection import HttpConnection
from dffs.source.http.protocol import Target


class ConnectionPool:
    """Idle connections by origin, most recently used first.

    trio runs every task on one thread, so no locking is needed: checkout and
    checkin never await between reading and changing the idle lists.
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_idle_per_origin: int = 16,
        idle_timeout: float = 30.0,
        ssl_context_factory: Callable[[], ssl.SSLContext] = ssl.create_default_context,
    ):
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle_per_origin = max_idle_per_origin
        self.idle_timeout = idle_timeout
        self._ssl_context_factory = ssl_context_factory
        self._ssl_context: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, str, int], list[HttpConnection]] = defaultdict(list)
        self.connections_opened = 0

    async def checkout(self, target: Target) -> HttpConnection:
        idle = self._idle.get(target.origin_key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self.idle_timeout:
                return conn
            await conn.aclose()
        self.connections_opened += 1
        if target.scheme == "https" and self._ssl_context is None:
            self._ssl_context = self._ssl_context_factory()
        return await HttpConnection.connect(
            target,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            ssl_context=self._ssl_context,
        )

    async def checkin(self, conn: HttpConnection) -> None:
        """Return a connection after its response; it is closed unless reusable."""
        idle = self._idle[conn.origin_key]
        if conn.reusable and len(idle) < self.max_idle_per_origin:
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            await conn.aclose()

    async def discard_idle(self, origin_key: tuple[str, str, int]) -> None:
        """Close an origin's idle connections (after one turned out stale, the rest likely are)."""
        for conn in self._idle.pop(origin_key, []):
            await conn.aclose()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                await conn.aclose()
        self._idle.clear()
