"""Passing a request straight through to its origin and relaying the answer.

Used for everything that does not go through P2P: manifests, tags, the
registry's ``/v2/`` check and its 401 challenges, token endpoints, any URL no
rule matches. Headers are relayed as lists (repeated headers such as
``WWW-Authenticate`` or ``Set-Cookie`` stay separate), hop-by-hop ones are
dropped both ways, request bodies (forward-proxy POSTs) are streamed up and
response bodies streamed down. Redirects are relayed, not followed: the client
decides. Upstream connections are kept alive in a small shared pool.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable

import h11
import trio

from dffs.proxy.protocol import end_to_end
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
    def __init__(self, key, stream: trio.abc.Stream):
        self.key = key
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.reused = False

    async def send(self, event, timeout: float) -> None:
        data = self.conn.send(event)
        if data:
            with trio.fail_after(timeout):
                await self.stream.send_all(data)

    async def next_event(self, timeout: float):
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.fail_after(timeout):
                data = await self.stream.receive_some(_RECV)
            self.conn.receive_data(data)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


class UpstreamPool:
    """Keep-alive connections to origins, shared by every client connection."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, max_idle_per_origin: int = 8):
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle_per_origin = max_idle_per_origin
        self._idle: dict[tuple, list[_Upstream]] = {}
        self._ssl: ssl.SSLContext | None = None
        #: Requests relayed to completion (for stats and tests).
        self.relayed = 0

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _checkout(self, target: Target, fresh: bool) -> _Upstream:
        idle = self._idle.get(target.origin_key, [])
        while idle and not fresh:
            up = idle.pop()
            up.reused = True
            return up
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await trio.open_tcp_stream(target.host, target.port)
                if target.scheme == "https":
                    stream = trio.SSLStream(
                        stream, self._ssl_context(), server_hostname=target.host, https_compatible=True
                    )
                    await stream.do_handshake()
        except trio.TooSlowError:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise UpstreamError(
                f"connecting to {target.host_header} timed out after {self.connect_timeout:g}s", 504
            ) from None
        except (OSError, trio.BrokenResourceError) as exc:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise UpstreamError(f"cannot connect to {target.host_header}: {exc.__cause__ or exc}") from None
        return _Upstream(target.origin_key, stream)

    async def _checkin(self, up: _Upstream) -> None:
        if up.conn.our_state is h11.DONE and up.conn.their_state is h11.DONE:
            up.conn.start_next_cycle()
            idle = self._idle.setdefault(up.key, [])
            if len(idle) < self.max_idle_per_origin:
                idle.append(up)
                return
        await up.aclose()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for up in idle:
                await up.aclose()
        self._idle.clear()

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
                    continue  # the server closed an idle keep-alive connection: once more on a fresh one
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
        await self._checkin(up)
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
