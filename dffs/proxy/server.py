"""The proxy port: a forward proxy, CONNECT tunnels and a registry mirror, on trio.

One trio task per client connection, all in the server's nursery (the
daemon's, so the proxy lives and dies with the daemon). h11 parses request
heads; :mod:`dffs.proxy.mirror` decides what each request is; this module only
does the I/O:

* **P2P** (registry blobs, rule matches): the task is opened through the
  daemon's TaskManager — one task per blob on every host, downloaded once per
  host and shared with peers. The answer streams piece by piece as pieces
  arrive: ``ensure_piece`` (single flight, verified), then the piece's bytes are
  read from the task's content file while it is pinned and sent. Not by
  ``sendfile``: that queues the page cache's pages themselves in the socket, and
  once the pin is gone the GC's hole punch zeroes them in place (a partially
  covered page or large folio) while a slow client has not received them yet —
  the soak's zeros in blobs (issue 16). A ``Range`` is
  answered 206 from just the pieces it covers; a whole blob starts a background
  fetch of the rest. A blob's sha256 is checked once the blob is complete: a
  whole-blob answer holds back its last piece until the check passes, and a
  mismatch deletes the task and cuts the answer short, so wrong bytes are never
  completed for anyone.
* **Passthrough** (:mod:`dffs.proxy.upstream`): straight to the origin, the
  answer relayed as it comes.
* **CONNECT**: a byte tunnel with an idle timeout.

Never an open relay: only loopback clients, plus the ``allow`` networks.
Timeouts on every wait, a connection limit (503 beyond it), a header-size
limit (431), and bad input answered with a 4xx before the connection closes:
one client can never take the daemon down.
"""

from __future__ import annotations

import errno
import functools
import http
import logging
import os
import socket
from collections import Counter

import h11
import trio

from dffs.digest import ExpectedDigest
from dffs.errors import DffsError, DigestMismatch, SourceError, UsageError
from dffs.httpserve import FileSpan, serve_listeners
from dffs.idgen import pieces_for_range
from dffs.peertask import DownloadRequest, PeerTask, TaskManager
from dffs.proxy.config import DEFAULT_PROXY_PORT, ProxyConfig
from dffs.proxy.mirror import Passthrough, Reject, RequestHead, Router, Tunnel, ViaP2P, normalize_upstream
from dffs.proxy.protocol import UNSATISFIABLE, ByteRange, parse_range
from dffs.proxy.rules import ProxyRules, is_loopback_address
from dffs.proxy.upstream import AbortClient, UpstreamError, UpstreamRelay
from dffs.source.http.protocol import parse_target

log = logging.getLogger(__name__)

_HEAD_RECV = 4096
_TUNNEL_RECV = 64 * 1024
_MSG_MORE = getattr(socket, "MSG_MORE", 0)
#: Bytes of a piece read and sent at a time (one buffer per answer being sent).
_SEND_CHUNK = 512 * 1024


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class _Close(Exception):
    """End this client connection."""


class _Client:
    """One client connection: h11 server state plus the raw socket."""

    def __init__(self, stream: trio.SocketStream, cfg: ProxyConfig):
        self.stream = stream
        self.sock = stream.socket
        self.cfg = cfg
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=cfg.max_header_bytes)

    async def send_bytes(self, data: bytes | memoryview, flags: int = 0) -> None:
        view = memoryview(data)
        while view:
            with trio.fail_after(self.cfg.send_timeout):
                sent = await self.sock.send(view, flags)
            view = view[sent:]

    async def send(self, event) -> None:
        if isinstance(event, h11.Data) and isinstance(event.data, FileSpan):
            self.conn.send_with_data_passthrough(event)
            return
        data = self.conn.send(event)
        if data:
            await self.send_bytes(data)

    async def next_event(self, timeout: float | None = None):
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.fail_after(timeout or self.cfg.read_timeout):
                data = await self.sock.recv(_HEAD_RECV if self.conn.their_state is h11.IDLE else 65536)
            self.conn.receive_data(data)

    async def send_range(self, fd: int, offset: int, count: int, buffer: memoryview) -> int:
        """``count`` bytes of ``fd`` at ``offset``, read (in a worker thread) into ``buffer`` a chunk
        at a time and sent; returns the bytes sent. Once a chunk is sent the kernel holds its own
        copy, so whatever happens to the file afterwards cannot change what the client gets."""
        end = offset + count
        while offset < end:
            chunk = buffer[: min(len(buffer), end - offset)]
            got = await trio.to_thread.run_sync(os.preadv, fd, [chunk], offset)
            if got == 0:
                raise OSError(errno.EIO, "content file ended before the piece did")
            await self.send_bytes(chunk[:got])
            offset += got
        return count


class ProxyServer:
    def __init__(self, tasks: TaskManager, config: ProxyConfig | None = None):
        self.tasks = tasks
        self.cfg = config or ProxyConfig()
        self.rules = ProxyRules.build(self.cfg.rules, self.cfg.bypass, self.cfg.allow)
        self.upstream = normalize_upstream(self.cfg.registry_mirror) if self.cfg.registry_mirror else None
        self.router = Router(self.rules, self.upstream)
        self.passthrough = UpstreamRelay(connect_timeout=self.cfg.connect_timeout, read_timeout=self.cfg.read_timeout)
        self.port: int | None = None
        self._socket: socket.socket | None = None
        self._unavailable = False
        self._prefetching: set[str] = set()
        self.connections_active = 0
        self.counts: Counter[str] = Counter()
        #: Body bytes sent from pieces (P2P answers).
        self.p2p_bytes = 0

    @property
    def stats(self) -> dict:
        return {
            "connections_active": self.connections_active,
            "p2p_bytes": self.p2p_bytes,
            "relayed": self.passthrough.relayed,
            "digest_mismatches": self.tasks.digest_mismatches,
            **self.counts,
        }

    # -------------------------------------------------------------- serving
    def bind(self) -> int | None:
        """Open the listening socket now, synchronously: the daemon calls this before it
        starts anything, so a taken or bad address is a one-line error, not a crash later.

        Returns the port, or None when the *default* port is taken: then there is no
        proxy and a warning says so (an explicit port must bind)."""
        if self._socket is not None or self._unavailable:
            return self.port
        port = DEFAULT_PROXY_PORT if self.cfg.port is None else self.cfg.port
        try:
            family = socket.getaddrinfo(self.cfg.listen, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
            self._socket = socket.create_server((self.cfg.listen, port), family=family, backlog=socket.SOMAXCONN)
        except OSError as exc:
            if self.cfg.port is None and exc.errno == errno.EADDRINUSE:
                log.warning(
                    "event=proxy_unavailable port=%d error='%s' detail='give --proxy-port to choose one'",
                    port,
                    exc.strerror,
                )
                self._unavailable = True
                return None
            raise DffsError(
                f"cannot listen on proxy address {self.cfg.listen}:{port}: "
                f"{os.strerror(exc.errno) if exc.errno else exc}"
            ) from None
        self.port = self._socket.getsockname()[1]
        return self.port

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``nursery.start`` gets the bound port, or
        None when the default port is taken (see :meth:`bind`)."""
        if self.bind() is None or self._socket is None:  # bound means a socket; the second test tells mypy
            task_status.started(None)
            return
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(self._socket))]
        self._socket = None
        try:
            own = {
                f"{self.cfg.listen}:{self.port}",
                f"localhost:{self.port}",
                f"127.0.0.1:{self.port}",
                f"[::1]:{self.port}",
            }
            self.router = Router(self.rules, self.upstream, frozenset(a.lower() for a in own))
            if not is_loopback_address(self.cfg.listen) and not self.rules.allow:
                log.warning(
                    "event=proxy_loopback_only listen=%s detail='no proxy_allow networks: only loopback "
                    "clients are served'",
                    self.cfg.listen,
                )
            log.info("event=proxy_listening address=%s:%d mirror=%s", self.cfg.listen, self.port, self.upstream)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(serve_listeners, self._handle_connection, listeners, name="proxy"))
                task_status.started(self.port)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            with trio.CancelScope(shield=True):
                await self.passthrough.aclose()

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        self.connections_active += 1
        try:
            try:
                peer = stream.socket.getpeername()[0]
            except OSError:
                return
            if not self.rules.client_allowed(peer):
                self.counts["refused_client"] += 1
                log.warning("event=proxy_client_refused client=%s", peer)
                await self._raw_error(stream, 403, "clients from this address may not use this proxy")
                return
            if self.connections_active > self.cfg.max_connections:
                self.counts["refused_busy"] += 1
                await self._raw_error(stream, 503, f"more than {self.cfg.max_connections} connections")
                return
            await self._serve_client(_Client(stream, self.cfg), peer)
        except (_Close, AbortClient):
            pass
        except (
            OSError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.TooSlowError,
            h11.ProtocolError,
        ) as exc:
            log.debug("event=proxy_connection_lost error=%s", exc)
        except Exception:
            # A bug met by one connection must not take the proxy (or the daemon) down with it.
            self.counts["error"] += 1
            log.exception("event=proxy_connection_failed")
        finally:
            self.connections_active -= 1
            await trio.aclose_forcefully(stream)

    async def _raw_error(self, stream: trio.SocketStream, status: int, message: str) -> None:
        body = f"{message}\n".encode()
        data = (
            f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        with trio.move_on_after(1):
            await stream.send_all(data)

    async def _serve_client(self, client: _Client, peer: str) -> None:
        first = True
        while True:
            event = await self._receive_request(client, first=first)
            if event is None:
                return
            first = False
            request = RequestHead.from_h11(event)
            if not request.has_body:
                end = await client.next_event()  # EndOfMessage, already parsed
                if not isinstance(end, h11.EndOfMessage):
                    return
            route = self.router.route(request)
            log.debug(
                "event=proxy_request client=%s method=%s target=%.200s route=%s",
                peer,
                request.method,
                request.target,
                type(route).__name__,
            )
            if isinstance(route, Reject):
                await self._send_error(client, route.status, route.message)
            elif isinstance(route, Tunnel):
                await self._tunnel(client, route)
                return
            elif isinstance(route, Passthrough):
                await self._passthrough(client, request, route)
            else:
                await self._serve_p2p(client, request, route)
            if client.conn.our_state is not h11.DONE or client.conn.their_state is not h11.DONE:
                return
            client.conn.start_next_cycle()

    async def _receive_request(self, client: _Client, *, first: bool) -> h11.Request | None:
        """The next request head, or None when the connection should end (after answering
        a malformed or oversized head, or a timeout)."""
        got_bytes = bool(client.conn.trailing_data[0])
        with trio.move_on_after(self.cfg.head_timeout if first else self.cfg.idle_timeout) as scope:
            while True:
                try:
                    event = client.conn.next_event()
                except h11.RemoteProtocolError as exc:
                    status = exc.error_status_hint
                    self.counts[f"status_{status}"] += 1
                    log.info("event=proxy_bad_request status=%d error=%s", status, exc)
                    await self._send_error(client, status, f"malformed request: {exc}", close=True)
                    return None
                if event is h11.NEED_DATA:
                    data = await client.sock.recv(_HEAD_RECV)
                    if data and not got_bytes:
                        got_bytes = True
                        if not first:
                            scope.deadline = trio.current_time() + self.cfg.head_timeout
                    client.conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    return event
                else:
                    return None  # ConnectionClosed
        if got_bytes and client.conn.our_state is h11.IDLE and client.conn.their_state is not h11.ERROR:
            self.counts["status_408"] += 1
            await self._send_error(client, 408, "request head not received in time", close=True)
        return None

    async def _send_error(self, client: _Client, status: int, message: str, *, close: bool = False) -> None:
        self.counts[f"status_{status}"] += 1
        if client.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            raise _Close()
        close = close or client.conn.their_state not in (h11.DONE, h11.MIGHT_SWITCH_PROTOCOL)
        body = f"{message}\n".encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        if close:
            headers.append(("Connection", "close"))
        if client.conn.their_state is h11.ERROR:
            # h11 refuses to frame anything after a protocol error: write the answer by hand.
            data = (
                f"HTTP/1.1 {status} {_reason(status)}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
            ).encode() + body
            await client.send_bytes(data)
            raise _Close()
        await client.send(h11.Response(status_code=status, reason=_reason(status), headers=headers))
        if client.conn.our_state is h11.SEND_BODY:  # not for HEAD
            await client.send(h11.Data(data=body))
        await client.send(h11.EndOfMessage())
        if close:
            raise _Close()

    # ---------------------------------------------------------- passthrough
    async def _passthrough(self, client: _Client, request: RequestHead, route: Passthrough) -> None:
        self.counts["passthrough"] += 1
        try:
            target = parse_target(route.url)
        except UsageError as exc:
            await self._send_error(client, 400, str(exc))
            return
        try:
            status = await self.passthrough.relay(
                request.method,
                target,
                route.headers,
                send_to_client=client.send,
                next_client_event=client.next_event if request.has_body else None,
            )
        except UpstreamError as exc:
            log.info("event=proxy_upstream_failed status=%d error=%s", exc.status, exc)
            await self._send_error(client, exc.status, str(exc), close=request.has_body)
            return
        log.debug("event=proxy_passthrough method=%s url=%.200s status=%d", request.method, route.url, status)

    # ------------------------------------------------------------------ P2P
    async def _serve_p2p(self, client: _Client, request: RequestHead, route: ViaP2P) -> None:
        self.counts["p2p"] += 1
        try:
            task = await self.tasks.open(DownloadRequest(url=route.url, headers=dict(route.headers)))
        except SourceError as exc:
            if exc.status is not None:
                # The origin refused (401 with its challenge, 404, 500...): let the client
                # see the origin's own answer, headers and all.
                log.info("event=proxy_origin_refused status=%d action=relay url=%.200s", exc.status, route.url)
                await self._passthrough(client, request, route.passthrough)
            else:
                await self._send_error(client, 502, str(exc))
            return
        except UsageError as exc:
            await self._send_error(client, 400, str(exc))
            return
        except DffsError as exc:
            await self._send_error(client, 502, str(exc))
            return
        with task.held():  # a slow client between pieces must not see its task forgotten
            await self._serve_task(client, route, task)

    async def _serve_task(self, client: _Client, route: ViaP2P, task: PeerTask) -> None:
        store = task.store
        meta = store.meta
        size = meta.content_length
        wanted = None
        if route.range is not None and (route.if_range is None or (meta.etag and route.if_range == meta.etag)):
            wanted = parse_range(route.range, size)
        if wanted is UNSATISFIABLE:
            self.counts["status_416"] += 1
            await client.send(
                h11.Response(
                    status_code=416,
                    reason=_reason(416),
                    headers=[("Content-Range", f"bytes */{size}"), ("Content-Length", "0")],
                )
            )
            await client.send(h11.EndOfMessage())
            return
        assert wanted is None or isinstance(wanted, ByteRange)
        start, length = (0, size) if wanted is None else (wanted.start, wanted.length)
        headers = [
            ("Content-Type", meta.content_type or "application/octet-stream"),
            ("Content-Length", str(length)),
            ("Accept-Ranges", "bytes"),
            ("X-Dffs-Task-Id", task.task_id),
        ]
        if route.digest:
            headers.append(("Docker-Content-Digest", route.digest))
        if meta.etag:
            headers.append(("ETag", meta.etag))
        if wanted is not None:
            headers.append(("Content-Range", wanted.content_range()))
        response = h11.Response(
            status_code=200 if wanted is None else 206, reason=_reason(200 if wanted is None else 206), headers=headers
        )
        if route.head:
            await client.send(response)
            await client.send(h11.EndOfMessage())
            return
        whole = start == 0 and length == size
        digest = str(ExpectedDigest.parse(route.digest)) if route.digest else None  # as TaskManager.verify labels it
        if whole and not store.is_complete():
            self._prefetch(task, digest)
        must_verify = whole and digest is not None and digest not in task.verified_digests
        await self._stream(client, task, response, start, length, digest if must_verify else None)
        if digest and store.is_complete() and digest not in task.verified_digests:
            self._prefetch(task, digest)  # a ranged reader completed it: check it in the background

    async def _stream(
        self, client: _Client, task: PeerTask, response: h11.Response, start: int, length: int, digest: str | None
    ) -> None:
        """Send the head once the first piece is here, then every piece as it arrives.

        With ``digest``, the last piece waits for the whole-blob check, so a
        blob that does not match is never delivered whole to anyone."""
        store = task.store
        meta = store.meta
        pieces = pieces_for_range(start, length, meta.content_length, meta.piece_length)
        head_sent = False
        buffer = memoryview(bytearray(min(_SEND_CHUNK, max(1, length))))
        for n in pieces:
            with store.pinned([n]):  # the GC leaves a piece alone while it is being sent
                try:
                    with trio.fail_after(self.cfg.piece_timeout):
                        await task.ensure_piece(n)
                    if digest is not None and n == pieces[-1]:
                        await self._verify(task, digest)
                except (DffsError, trio.TooSlowError) as exc:
                    message = (
                        f"piece {n} of task {task.task_id} did not arrive within {self.cfg.piece_timeout:g}s"
                        if isinstance(exc, trio.TooSlowError)
                        else str(exc)
                    )
                    log.warning(
                        "task=%s piece=%d event=proxy_piece_failed head_sent=%s error=%s",
                        task.task_id,
                        n,
                        head_sent,
                        message,
                    )
                    if not head_sent:
                        await self._send_error(client, 502, message)
                        return
                    raise AbortClient(message) from None
                # A private fd per piece: the store may swap its content file (detaching a
                # hard-linked export) while we send, and later pieces go to the new one.
                own_fd, base = store.content_location()
                fd = os.dup(own_fd)
                try:
                    if not head_sent:
                        await client.send(response)
                        # h11 passes data it does not look at through; its hint says bytes.
                        client.conn.send_with_data_passthrough(h11.Data(data=FileSpan(length)))  # type: ignore[arg-type]
                        head_sent = True
                    span = store.span(n)
                    lo, hi = max(start, span.offset), min(start + length, span.offset + span.length)
                    self.p2p_bytes += await client.send_range(fd, base + lo, hi - lo, buffer)
                finally:
                    os.close(fd)
        if not head_sent:  # an empty body
            await client.send(response)
        await client.send(h11.EndOfMessage())

    async def _verify(self, task: PeerTask, digest: str) -> None:
        """The blob's sha256, once per task (TaskManager.verify: a mismatch deletes the task)."""
        try:
            await self.tasks.verify(task, ExpectedDigest.parse(digest), concurrency=self.cfg.prefetch_concurrency)
        except DigestMismatch as exc:
            log.warning("task=%s event=blob_digest_mismatch action=deleted error=%s", task.task_id, exc)
            raise
        self.counts["blobs_verified"] += 1

    def _prefetch(self, task: PeerTask, digest: str | None) -> None:
        """Fetch the rest of a task in its background (and check its digest), once per task."""
        if task.task_id in self._prefetching:
            return
        self._prefetching.add(task.task_id)
        task.background.start_soon(self._run_prefetch, task, digest)

    async def _run_prefetch(self, task: PeerTask, digest: str | None) -> None:
        try:
            if not task.store.is_complete():
                await task.fetch_all(concurrency=self.cfg.prefetch_concurrency)
            if digest is not None:
                await self._verify(task, digest)
        except DffsError as exc:
            log.warning("task=%s event=proxy_prefetch_failed error=%s", task.task_id, exc)
        finally:
            self._prefetching.discard(task.task_id)

    # --------------------------------------------------------------- tunnel
    async def _tunnel(self, client: _Client, route: Tunnel) -> None:
        self.counts["tunnel"] += 1
        try:
            with trio.fail_after(self.cfg.connect_timeout):
                upstream = await trio.open_tcp_stream(route.host, route.port)
        except (OSError, trio.TooSlowError) as exc:
            status = 504 if isinstance(exc, trio.TooSlowError) else 502
            await self._send_error(
                client,
                status,
                f"cannot connect to {route.host}:{route.port}: {getattr(exc, 'strerror', None) or 'timed out'}",
                close=True,
            )
            return
        try:
            await client.send(h11.Response(status_code=200, reason="Connection established", headers=[]))
            leftover, _ = client.conn.trailing_data
            if leftover:
                await upstream.send_all(leftover)
            with trio.CancelScope() as scope:
                idle = self.cfg.tunnel_idle_timeout
                scope.deadline = trio.current_time() + idle

                async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                    try:
                        while data := await source.receive_some(_TUNNEL_RECV):
                            await sink.send_all(data)
                            scope.deadline = trio.current_time() + idle
                        await sink.send_eof()
                    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        log.debug("event=proxy_tunnel_closed host=%s port=%d error=%s", route.host, route.port, exc)
                        scope.cancel()  # one side broke: the tunnel is over

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pump, client.stream, upstream)
                    nursery.start_soon(pump, upstream, client.stream)
        finally:
            await trio.aclose_forcefully(upstream)
