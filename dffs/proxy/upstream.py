"""Passing a request straight through to its origin and relaying the answer.

Used for everything that does not go through P2P: manifests, tags, the
registry's ``/v2/`` check and its 401 challenges, token endpoints, any URL no
rule matches. Headers are relayed as lists (repeated headers such as
``WWW-Authenticate`` or ``Set-Cookie`` stay separate), hop-by-hop ones are
dropped both ways, request bodies (forward-proxy POSTs) are streamed up and
response bodies streamed down. Redirects are relayed, not followed: the client
decides. Upstream connections are kept alive in the pool the back-to-source
client uses too (``dffs.source.http.pool``); what is said over them differs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import h11
import trio

from dffs.errors import SourceError
from dffs.proxy.protocol import end_to_end
from dffs.source.http.pool import ConnectionPool, ConnectTimeout
from dffs.source.http.protocol import Target

log = logging.getLogger(__name__)

_RECV = 64 * 1024


class UpstreamError(Exception):
    """The upstream could not be reached or broke before answering (502/504 to the client)."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status


class AbortClient(Exception):
    """The answer is half sent and cannot be finished: drop the client connection."""


class _Upstream:
    """One keep-alive connection to an origin, spoken through h11 so events can be relayed as they come."""

    def __init__(self, target: Target, stream: trio.abc.Stream):
        self.origin_key = target.origin_key
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.idle_since = time.monotonic()
        #: Request/response cycles completed on it: a reused connection may have been closed by the server.
        self.exchanges = 0
        self._open = True

    @property
    def reused(self) -> bool:
        return self.exchanges > 0

    @property
    def reusable(self) -> bool:
        return self._open and self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE

    def finish(self) -> None:
        """After a whole exchange: ready h11 for the next request, if both sides left the connection open."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            self.exchanges += 1

    async def send(self, event: h11.Event, timeout: float) -> None:
        data = self.conn.send(event)
        if data:
            with trio.fail_after(timeout):
                await self.stream.send_all(data)

    async def next_event(self, timeout: float) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        """The next event, receiving as needed (never NEED_DATA in fact: mypy cannot narrow a sentinel class)."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.fail_after(timeout):
                data = await self.stream.receive_some(_RECV)
            self.conn.receive_data(data)  # type: ignore[arg-type]  # h11 takes bytearray too; its hint says bytes

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            await trio.aclose_forcefully(self.stream)


class UpstreamRelay:
    """Relays requests to their origins over keep-alive connections (the shared pool), for every client."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, max_idle_per_origin: int = 8):
        self.read_timeout = read_timeout
        self._pool = ConnectionPool(_Upstream, connect_timeout=connect_timeout, max_idle_per_origin=max_idle_per_origin)
        #: Requests relayed to completion (for stats and tests).
        self.relayed = 0

    async def _checkout(self, target: Target, fresh: bool) -> _Upstream:
        try:
            return await self._pool.checkout(target, fresh=fresh)
        except ConnectTimeout as exc:
            raise UpstreamError(str(exc), 504) from None
        except SourceError as exc:
            raise UpstreamError(str(exc)) from None

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def relay(
        self,
        method: str,
        target: Target,
        headers: tuple[tuple[str, str], ...],
        *,
        send_to_client: Callable[[object], Awaitable[None]],
        next_client_event: Callable[[], Awaitable[object]] | None,
    ) -> int:
        """Send the request upstream, stream the answer to the client; returns the status.

        ``send_to_client(event)`` sends an h11 event to the client;
        ``next_client_event()`` yields the request body's events (None: no body).
        Raises UpstreamError before anything was sent to the client (the caller
        answers 502/504), AbortClient once the answer is half sent.
        """
        request = h11.Request(
            method=method, target=target.path, headers=[("Host", target.host_header), *headers, ("Via", "1.1 dffs")]
        )
        for attempt in (0, 1):
            up = await self._checkout(target, fresh=attempt == 1)
            try:
                await up.send(request, self.read_timeout)
                if next_client_event is None:
                    await up.send(h11.EndOfMessage(), self.read_timeout)
                else:
                    while True:
                        event = await next_client_event()
                        if isinstance(event, h11.Data):
                            await up.send(event, self.read_timeout)
                        elif isinstance(event, h11.EndOfMessage):
                            await up.send(h11.EndOfMessage(), self.read_timeout)
                            break
                        else:
                            raise AbortClient("the client closed before sending its whole body")
                response = await self._response_head(up, send_to_client)
                break
            except (
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                OSError,
                h11.ProtocolError,
                _ClosedEarly,
            ) as exc:
                await up.aclose()
                if up.reused and next_client_event is None and attempt == 0:
                    # The server closed an idle keep-alive connection (and likely its others): once more on a new one.
                    await self._pool.discard_idle(target.origin_key)
                    continue
                raise UpstreamError(
                    f"{method} {target.host_header}{target.path[:200]}: upstream failed: {exc or type(exc).__name__}"
                ) from None
            except trio.TooSlowError:
                await up.aclose()
                raise UpstreamError(
                    f"{method} {target.host_header}{target.path[:200]}: upstream silent for {self.read_timeout:g}s", 504
                ) from None
            except BaseException:
                await up.aclose()
                raise
        # The head is the client's now; from here a failure can only cut the answer short.
        try:
            await send_to_client(
                h11.Response(
                    status_code=response.status_code,
                    reason=response.reason,
                    headers=end_to_end([(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers]),
                )
            )
            while True:
                event = await up.next_event(self.read_timeout)
                if isinstance(event, h11.Data):
                    await send_to_client(h11.Data(data=event.data))
                elif isinstance(event, h11.EndOfMessage):
                    await send_to_client(h11.EndOfMessage())
                    break
                else:
                    raise AbortClient(f"upstream {target.host_header} closed mid-body")
        except BaseException as exc:
            await up.aclose()
            if isinstance(
                exc, (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.ProtocolError)
            ):
                raise AbortClient(f"relay from {target.host_header} failed: {exc or type(exc).__name__}") from None
            raise
        self.relayed += 1
        up.finish()
        await self._pool.checkin(up)
        return response.status_code

    async def _response_head(self, up: _Upstream, send_to_client) -> h11.Response:
        while True:
            event = await up.next_event(self.read_timeout)
            if isinstance(event, h11.InformationalResponse):
                if event.status_code != 101:
                    await send_to_client(event)
                continue
            if isinstance(event, h11.Response):
                return event
            raise _ClosedEarly("upstream closed before answering")


class _ClosedEarly(Exception):
    pass
