"""The piece upload server: serves verified pieces to other peers with ``os.sendfile``.

One trio task per connection, all in the server's nursery: cancelling
:meth:`PieceUploadServer.serve` closes every connection. h11 parses the
request heads and keeps the HTTP/1.1 state (keep-alive, HEAD, HTTP/1.0);
the body never passes through Python — the head is sent with ``MSG_MORE``
and the piece follows from the task's content file with ``os.sendfile`` on
the non-blocking socket (``wait_writable`` whenever the socket is full).

What it protects:

* Only pieces of tasks in the StorageManager, only pieces present, and each
  piece verified against its digest before its first upload (in a worker
  thread); a piece that fails is dropped by the store and answered 404, so a
  byte damaged at rest never leaves this peer.
* Upload slots: beyond ``max_concurrent_uploads`` a GET is answered 503 with
  ``Retry-After`` at once, never queued — the downloader has other parents.
* Time: a connection must deliver a complete request head within
  ``head_timeout`` of connecting (or of the first byte of a later request), may
  idle between requests for ``idle_timeout``, and a reader that stops reading
  for ``send_timeout`` loses the connection — nobody holds a slot forever.
* Bandwidth: an optional token bucket shared by every upload.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping

import attrs
import h11
import trio

from dffs.errors import StorageError
from dffs.httpserve import FileSpan, serve_listeners
from dffs.metrics import daemon as metrics
from dffs.security.pieceauth import PieceAuth, PieceAuthError
from dffs.storage import StorageManager, TaskStore
from dffs.upload.protocol import (
    Busy,
    MalformedHttp,
    NotFound,
    PieceCorrupt,
    PieceRequest,
    PieceRequestError,
    Unauthorized,
    check_piece_number,
    error_body,
    has_body,
    parse_request,
    piece_headers,
    reason_phrase,
)

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_PORT = 4000
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
#: Reads of request heads are small so h11's head-size limit is checked often
#: (it only looks while a head is incomplete).
_HEAD_RECV = 4096
_MSG_MORE = getattr(socket, "MSG_MORE", 0)
_FALLBACK_CHUNK = 1024 * 1024
_NO_SENDFILE_ERRORS = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


@attrs.frozen
class UploadStats:
    """A snapshot of the server's counters."""

    connections_accepted: int
    connections_active: int
    uploads_active: int
    #: Completed piece bodies (GET); HEAD answers are counted in ``heads_served``.
    uploads_served: int
    heads_served: int
    bytes_uploaded: int
    #: Body bytes sent by ``os.sendfile`` (the zero-copy path) and calls made.
    sendfile_bytes: int
    sendfile_calls: int
    #: Body bytes sent by pread + send (only where sendfile is unavailable).
    fallback_bytes: int
    #: Uploads cut off midway (the reader vanished or stalled past send_timeout).
    uploads_aborted: int
    #: Refused requests by reason: bad_request, malformed, headers_too_large,
    #: not_found, corrupt, method, out_of_range, busy, timeout, error.
    rejected: Mapping[str, int]


class TokenBucket:
    """Bytes per second shared by every upload.

    Takers may overdraw: one that finds the bucket short records the debt
    and sleeps until it is repaid, so concurrent uploads queue in virtual
    time and the total never exceeds ``rate`` beyond one ``burst``. Uses
    trio's clock, so tests can drive it with a MockClock.
    """

    def __init__(self, rate: float, burst: int | None = None):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        #: Bytes handed to one sendfile call while limited: ~50 ms of budget.
        self.chunk = int(min(1024 * 1024, max(16 * 1024, rate / 20)))
        self.burst = burst if burst is not None else self.chunk
        self._tokens = float(self.burst)
        self._updated: float | None = None

    async def take(self, n: int) -> None:
        now = trio.current_time()
        if self._updated is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= n
        if self._tokens < 0:
            try:
                await trio.sleep(-self._tokens / self.rate)
            except BaseException:
                self._tokens += n  # cancelled before sending: give the budget back
                raise


@attrs.frozen
class _Prepared:
    """A piece ready to send: a private fd of the content file and what to say about it."""

    fd: int
    offset: int
    length: int
    digest: bytes
    task_length: int
    piece_length: int
    #: Releases the piece's GC pin once the upload is over.
    unpin: Callable[[], None] | None = None


class _Close(Exception):
    """End this connection (after an answer that said so, or a timeout)."""


class _TlsSocket:
    """The two socket calls the server makes, over TLS (``data_plane = "tls"``). There is no
    sendfile under TLS in Python: piece bytes are read and encrypted in user space."""

    is_tls = True

    def __init__(self, stream: trio.SSLStream):
        self.stream = stream

    async def recv(self, size: int) -> bytes:
        return bytes(await self.stream.receive_some(size))

    async def send(self, data, flags: int = 0) -> int:
        await self.stream.send_all(data)
        return len(data)


class PieceUploadServer:
    """Serves this daemon's pieces on the upload port; see the module docstring.

    ``host=None`` listens on every interface, IPv6 and IPv4 on one dual-stack
    socket where the system allows. ``port=0`` picks a free port, which
    :meth:`serve` reports to ``nursery.start`` (and :attr:`port` holds).
    ``max_header_bytes`` bounds a request head (h11 checks it while the head
    is incomplete, so a head may pass it by at most one 4 KiB read); beyond
    it the answer is 431. ``retry_after`` is the seconds a 503 suggests.
    """

    def __init__(
        self,
        storage: StorageManager,
        *,
        host: str | None = None,
        port: int = DEFAULT_UPLOAD_PORT,
        max_concurrent_uploads: int = 16,
        rate_limit_bytes_per_sec: float | None = None,
        head_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        send_timeout: float = 30.0,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        retry_after: int = 1,
        auth: PieceAuth | None = None,
        tls: ssl.SSLContext | None = None,
        min_rate: float = 256 * 1024,
        max_connections: int = 1024,
        max_connections_per_client: int = 64,
    ):
        if max_concurrent_uploads < 1:
            raise ValueError("max_concurrent_uploads must be at least 1")
        self.storage = storage
        self.host = host
        self.port = port
        self.max_concurrent_uploads = max_concurrent_uploads
        self.head_timeout = head_timeout
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.max_header_bytes = max_header_bytes
        self.retry_after = retry_after
        #: Checks that each request is signed by a cluster member; None: anyone may fetch (--insecure).
        self.auth = auth
        #: Server TLS context (client certificates required) when the data plane runs TLS; None: plain.
        self.tls = tls
        #: A child that reads a piece slower than this (bytes/s, after a grace of ``send_timeout``)
        #: loses its connection: a drip of reads must not hold an upload slot for ever.
        self.min_rate = min_rate
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        self._per_client: Counter[str] = Counter()
        self._bucket = TokenBucket(rate_limit_bytes_per_sec) if rate_limit_bytes_per_sec else None
        self._connections_accepted = 0
        self._connections_active = 0
        self._uploads_active = 0
        self._uploads_served = 0
        self._heads_served = 0
        self._bytes_uploaded = 0
        self._sendfile_bytes = 0
        self._sendfile_calls = 0
        self._fallback_bytes = 0
        self._uploads_aborted = 0
        self._rejected: Counter[str] = Counter()
        self._use_sendfile = hasattr(os, "sendfile")

    @property
    def stats(self) -> UploadStats:
        return UploadStats(
            connections_accepted=self._connections_accepted,
            connections_active=self._connections_active,
            uploads_active=self._uploads_active,
            uploads_served=self._uploads_served,
            heads_served=self._heads_served,
            bytes_uploaded=self._bytes_uploaded,
            sendfile_bytes=self._sendfile_bytes,
            sendfile_calls=self._sendfile_calls,
            fallback_bytes=self._fallback_bytes,
            uploads_aborted=self._uploads_aborted,
            rejected=dict(self._rejected),
        )

    # -------------------------------------------------------------- serving
    @property
    def rate_limit(self) -> float | None:
        return self._bucket.rate if self._bucket else None

    def set_rate_limit(self, bytes_per_sec: float | None) -> None:
        """Change the upload cap while serving (the cluster's dynamic config); None or 0: no cap.
        Uploads in progress pick it up at their next chunk."""
        if not bytes_per_sec:
            self._bucket = None
        elif self._bucket is None or self._bucket.rate != bytes_per_sec:
            self._bucket = TokenBucket(bytes_per_sec)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``nursery.start`` gets the bound port."""
        listeners = await self._open_listeners()
        try:
            self.port = listeners[0].socket.getsockname()[1]
            log.info(
                "event=upload_server_listening addresses=%s",
                ",".join(str(lst.socket.getsockname()[:2]) for lst in listeners),
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(serve_listeners, self._handle_connection, listeners, name="upload")
                )
                task_status.started(self.port)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _open_listeners(self) -> list[trio.SocketListener]:
        if self.host is None:
            try:
                sock = trio.socket.socket(trio.socket.AF_INET6, trio.socket.SOCK_STREAM)
            except OSError:
                return await trio.open_tcp_listeners(self.port, host="0.0.0.0")
            try:
                sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 0)
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                await sock.bind(("::", self.port))
                sock.listen(socket.SOMAXCONN)
            except BaseException:
                sock.close()
                raise
            return [trio.SocketListener(sock)]
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        if self.port == 0 and len(listeners) > 1:
            # Each address would get a different free port; serve the first only.
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        return listeners

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        self._connections_accepted += 1
        self._connections_active += 1
        sock = stream.socket
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)
        try:
            client = sock.getpeername()[0]
        except OSError:
            client = "?"
        if self.tls is not None:
            tls_stream = trio.SSLStream(stream, self.tls, server_side=True)
            try:
                with trio.fail_after(self.head_timeout):
                    await tls_stream.do_handshake()
            except (trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
                self._connections_active -= 1
                log.info("event=upload_tls_refused client=%s error=%s", client, exc)
                await trio.aclose_forcefully(stream)
                return
            sock = _TlsSocket(tls_stream)  # type: ignore[assignment]
        self._per_client[client] += 1
        try:
            if (
                self._connections_active > self.max_connections
                or self._per_client[client] > self.max_connections_per_client
            ):
                self._rejected["too_many_connections"] += 1
                log.info("event=upload_connection_refused client=%s reason=too_many_connections", client)
                body = b"too many connections\n"
                with trio.move_on_after(1):  # h11 answers only requests: this one is said before any
                    await self._send_bytes(
                        sock,
                        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: "
                        + str(self.retry_after).encode()
                        + b"\r\nContent-Length: "
                        + str(len(body)).encode()
                        + b"\r\n\r\n"
                        + body,
                    )
                return
            first = True
            while True:
                event = await self._receive_request(conn, sock, first=first)
                if event is None:
                    return
                first = False
                await self._answer(conn, sock, event)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # Connection: close, HTTP/1.0, or an error answer
                conn.start_next_cycle()
        except _Close:
            pass
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            log.debug("event=upload_connection_lost error=%s", exc)
        except Exception:
            # A bug met by one connection must not take the upload port down with it.
            self._rejected["error"] += 1
            log.exception("event=upload_connection_failed")
        finally:
            self._connections_active -= 1
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]
            await trio.aclose_forcefully(stream)

    # -------------------------------------------------------------- requests
    async def _receive_request(self, conn: h11.Connection, sock, *, first: bool) -> h11.Request | None:
        """The next complete request head (with no body), or None when the connection ends.

        A new connection gets ``head_timeout`` for its whole first head. Later,
        the connection may idle for ``idle_timeout``; once a byte of the next
        request arrives its head must complete within ``head_timeout``.
        """
        request: h11.Request | None = None
        got_bytes = bool(conn.trailing_data[0])  # pipelined bytes already count
        with trio.move_on_after(self.head_timeout if first else self.idle_timeout) as scope:
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    await self._send_error(conn, sock, MalformedHttp(str(exc), exc.error_status_hint), head=False)
                    return None
                if event is h11.NEED_DATA:
                    data = await sock.recv(_HEAD_RECV)
                    if data and not got_bytes:
                        got_bytes = True
                        if not first:
                            scope.deadline = trio.current_time() + self.head_timeout
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    if has_body(event.headers):
                        await self._send_error(
                            conn, sock, MalformedHttp("piece requests have no body"), head=event.method == b"HEAD"
                        )
                        return None
                    request = event
                elif isinstance(event, h11.EndOfMessage):
                    return request
                else:  # ConnectionClosed (a Data event cannot come: bodies are refused above)
                    return None
        # Timed out. An idle keep-alive connection simply expires; a slow or silent new one is refused.
        if first or got_bytes:
            self._rejected["timeout"] += 1
            log.debug("event=upload_request_timeout first=%s partial_head=%s", first, got_bytes)
        if got_bytes and conn.our_state is h11.IDLE and conn.their_state is not h11.ERROR:
            with trio.move_on_after(1):
                data = conn.send(
                    h11.Response(
                        status_code=408,
                        reason=reason_phrase(408),
                        headers=[("Content-Length", "0"), ("Connection", "close")],
                    )
                )
                await self._send_bytes(sock, data)
        return None

    async def _answer(self, conn: h11.Connection, sock, event: h11.Request) -> None:
        is_head = event.method == b"HEAD"
        try:
            request = parse_request(event.method, event.target)
            self._authenticate(event)
        except PieceRequestError as exc:
            await self._send_error(conn, sock, exc, head=is_head)
            return
        slot = False
        if not request.is_head:
            if self._uploads_active >= self.max_concurrent_uploads:
                busy = Busy(f"all {self.max_concurrent_uploads} upload slots are taken", retry_after=self.retry_after)
                await self._send_error(conn, sock, busy, head=False)
                return
            self._uploads_active += 1
            slot = True
        try:
            try:
                prepared = await trio.to_thread.run_sync(self._prepare, request)
            except PieceRequestError as exc:
                await self._send_error(conn, sock, exc, head=is_head, request=request)
                return
            try:
                await self._send_piece(conn, sock, request, prepared)
            finally:
                os.close(prepared.fd)
                if prepared.unpin is not None:
                    prepared.unpin()
        finally:
            if slot:
                self._uploads_active -= 1

    def _authenticate(self, event: h11.Request) -> None:
        """Only members fetch pieces: the request must carry a valid cluster signature."""
        if self.auth is None:
            return
        header = next((v for k, v in event.headers if k == b"authorization"), None)
        try:
            self.auth.verify(
                header.decode("latin-1") if header is not None else None,
                event.method.decode("ascii"),
                event.target.decode("ascii"),
                time.time(),
            )
        except PieceAuthError as exc:
            log.info("event=upload_refused reason=unauthorized error=%s", exc)
            raise Unauthorized(str(exc)) from None

    def _prepare(self, request: PieceRequest) -> _Prepared:
        """In a worker thread: find, verify and pin the piece (opening a task may
        verify it after a crash, and verifying reads the whole piece)."""
        n = request.number
        pinned: TaskStore | None = None  # the store whose pin on piece n must be released on failure
        try:
            store = self.storage.open_task(request.task_id)
            if store is None:
                raise NotFound(f"task {request.task_id} is not here")
            meta = store.meta
            check_piece_number(
                n, task_length=meta.content_length, piece_length=meta.piece_length, piece_count=meta.piece_count
            )
            store.pin((n,))  # the GC never evicts a piece while it is uploaded
            pinned = store
            if not store.has_piece(n):
                raise NotFound(f"piece {n} of task {request.task_id} is not here")
            store.touch((n,))
            verified_before = store.is_verified(n)
            if not verified_before and not store.ensure_verified(n):
                log.warning("task=%s piece=%d event=upload_refused reason=corrupt", request.task_id, n)
                raise PieceCorrupt(f"piece {n} of task {request.task_id} is not here")
            digest = store.piece_digest(n)
            if digest is None:
                raise NotFound(f"piece {n} of task {request.task_id} is not here")
            span = store.span(n)
            # A private fd: the store may swap or close its own while we send.
            own_fd, base = store.content_location()
            fd = os.dup(own_fd)
        except (OSError, StorageError) as exc:
            if pinned is not None:
                pinned.unpin((n,))
            log.warning("task=%s piece=%d event=upload_refused reason=storage error=%s", request.task_id, n, exc)
            raise NotFound(f"piece {n} of task {request.task_id} is unavailable") from None
        except BaseException:
            if pinned is not None:
                pinned.unpin((n,))
            raise
        if verified_before and not request.is_head and hasattr(os, "posix_fadvise"):
            try:  # start reading it in if it left the page cache; sendfile would block the loop
                os.posix_fadvise(fd, base + span.offset, span.length, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
        return _Prepared(
            fd,
            base + span.offset,
            span.length,
            digest,
            meta.content_length,
            meta.piece_length,
            unpin=lambda: store.unpin((n,)),
        )

    # ------------------------------------------------------------- answers
    async def _send_piece(self, conn: h11.Connection, sock, request: PieceRequest, piece: _Prepared) -> None:
        head = conn.send(
            h11.Response(
                status_code=200,
                reason=reason_phrase(200),
                headers=piece_headers(
                    length=piece.length,
                    digest=piece.digest,
                    task_length=piece.task_length,
                    piece_length=piece.piece_length,
                ),
            )
        )
        if request.is_head:
            await self._send_bytes(sock, head + conn.send(h11.EndOfMessage()))
            self._heads_served += 1
            return
        # Tell h11 the body went out (it checks the length), then really send it.
        conn.send_with_data_passthrough(h11.Data(data=FileSpan(piece.length)))  # type: ignore[arg-type]  # see FileSpan
        tail = conn.send(h11.EndOfMessage())
        assert not tail  # Content-Length framing has no trailer
        await self._send_bytes(sock, head, _MSG_MORE)
        deadline = self.send_timeout + piece.length / self.min_rate
        try:
            with trio.fail_after(deadline):
                await self._send_file(sock, piece.fd, piece.offset, piece.length)
        except trio.TooSlowError:
            self._uploads_aborted += 1
            self._rejected["too_slow"] += 1
            log.info(
                "task=%s piece=%d event=upload_aborted reason=too_slow seconds=%.0f",
                request.task_id,
                request.number,
                deadline,
            )
            raise _Close() from None
        except BaseException:
            self._uploads_aborted += 1
            raise
        self._uploads_served += 1
        self._bytes_uploaded += piece.length
        metrics.uploads.inc()
        metrics.upload_bytes.inc(piece.length)
        log.debug("task=%s piece=%d event=piece_uploaded bytes=%d", request.task_id, request.number, piece.length)

    async def _send_error(
        self, conn: h11.Connection, sock, error: PieceRequestError, *, head: bool, request: PieceRequest | None = None
    ) -> None:
        self._rejected[error.code] += 1
        if request is not None:
            log.debug(
                "task=%s piece=%d event=upload_rejected status=%d reason=%s",
                request.task_id,
                request.number,
                error.status,
                error.code,
            )
        else:
            log.debug("event=upload_rejected status=%d reason=%s detail=%s", error.status, error.code, error)
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            raise _Close()
        body = b"" if head else error_body(error)
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(error_body(error)) if head else len(body))),
            *error.headers(),
        ]
        if error.close:
            headers.append(("Connection", "close"))
        data = conn.send(h11.Response(status_code=error.status, reason=reason_phrase(error.status), headers=headers))
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await self._send_bytes(sock, data)
        if error.close:
            raise _Close()

    # ----------------------------------------------------------------- bytes
    async def _send_bytes(self, sock, data: bytes, flags: int = 0) -> None:
        view = memoryview(data)
        while view:
            with trio.fail_after(self.send_timeout):
                sent = await sock.send(view, flags)
            view = view[sent:]

    async def _send_file(self, sock, fd: int, offset: int, count: int) -> None:
        """``count`` bytes of ``fd`` at ``offset`` to the socket with sendfile, paced by the bucket."""
        if not self._use_sendfile or getattr(sock, "is_tls", False):
            await self._send_file_fallback(sock, fd, offset, count)
            return
        out = sock.fileno()
        start, end = offset, offset + count
        chunk = count if self._bucket is None else self._bucket.chunk
        while offset < end:
            stop = min(end, offset + chunk)
            if self._bucket is not None:
                await self._bucket.take(stop - offset)
            while offset < stop:
                try:
                    sent = os.sendfile(out, fd, offset, stop - offset)
                except BlockingIOError:
                    with trio.fail_after(self.send_timeout):
                        await trio.lowlevel.wait_writable(out)
                    continue
                except OSError as exc:
                    if exc.errno in _NO_SENDFILE_ERRORS and offset == start:
                        log.warning("event=sendfile_unavailable error=%s action=fallback_pread", exc.strerror)
                        self._use_sendfile = False
                        await self._send_file_fallback(sock, fd, offset, end - offset)
                        return
                    raise
                self._sendfile_calls += 1
                if sent == 0:
                    raise OSError(errno.EIO, "content file ended before the piece did")
                offset += sent
                self._sendfile_bytes += sent
                if offset < end:
                    # A reader that keeps up never makes sendfile block: yield anyway,
                    # so one fast stream cannot starve the other connections. (Not
                    # after the last byte: the upload is accounted for before anyone
                    # else runs, which keeps the counters exact for in-process tests.)
                    await trio.lowlevel.checkpoint()

    async def _send_file_fallback(self, sock, fd: int, offset: int, count: int) -> None:
        end = offset + count
        while offset < end:
            size = min(end - offset, self._bucket.chunk if self._bucket else _FALLBACK_CHUNK)
            if self._bucket is not None:
                await self._bucket.take(size)
            data = await trio.to_thread.run_sync(os.pread, fd, size, offset)
            if not data:
                raise OSError(errno.EIO, "content file ended before the piece did")
            await self._send_bytes(sock, data)
            offset += len(data)
            self._fallback_bytes += len(data)
