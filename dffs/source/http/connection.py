"""One HTTP/1.1 connection on trio: h11 frames the heads, bodies go straight into buffers.

h11 parses and validates the request and response heads. For a body with a
Content-Length (every static origin and every ranged response) the bytes are
received with ``recv_into`` directly into the caller's buffer, with no
intermediate copies; chunked and close-delimited bodies go through h11.
scripts/bench/source_throughput.py measures the difference against h11
alone (see docs/benchmarks.md): it is why this hybrid exists.

Large body reads on plain TCP (a piece, ``THREAD_RECV_MIN`` bytes or more) are
received in a worker thread, one blocking ``recv(MSG_WAITALL)`` for the whole
buffer: the kernel fills it as the bytes arrive, with the GIL released, instead
of the event loop waking for every few hundred KiB. On the 2-core VM the event
loop is what limits a cold read through the mount (it also answers every FUSE
request); see docs/benchmarks.md.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time

import h11
import trio

from dffs.bounds import validator
from dffs.errors import RetryableSourceError, SourceError
from dffs.source.http.pool import reason
from dffs.source.http.protocol import (
    ResponseHead,
    Target,
    body_is_empty,
    headers_to_dict,
    keep_alive,
)

MAX_HEAD_BYTES = 64 * 1024
_HEAD_READ = 16 * 1024
#: Body reads of at least this many bytes go to a worker thread (see the module's docstring).
THREAD_RECV_MIN = 1 << 20
#: Receive threads across the process: apart from trio's default limiter, so blocked receives
#: never hold the threads that store pieces.
_RECV_THREADS: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("dffs_recv_threads")


class HttpConnection:
    """A connection to one origin; send one request at a time, read its body, reuse.

    Made by the pool (``pool.ConnectionPool``) of a stream it opened; ``read_timeout`` bounds every silence.
    """

    def __init__(self, target: Target, stream: trio.abc.Stream, read_timeout: float):
        self.origin_key = target.origin_key
        self._stream = stream
        # Plain TCP exposes its socket so bodies can be received with recv_into.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self.read_timeout = read_timeout
        self.requests_sent = 0
        self.idle_since = time.monotonic()
        self.content_length: int | None = None
        self._reset_body_state()
        self._open = True

    def _reset_body_state(self) -> None:
        self._pending = memoryview(b"")
        self._remaining: int | None = 0  # None: until the peer closes
        self._h11: h11.Connection | None = None  # set only for chunked bodies
        self._chunk = memoryview(b"")
        self._reusable = False

    # ------------------------------------------------------------- request
    async def request(self, method: str, target: Target, headers: list[tuple[str, str]]) -> ResponseHead:
        """Send a request and read the response head; the body is then read with readinto."""
        conn = h11.Connection(h11.CLIENT)
        data = conn.send(
            h11.Request(method=method, target=target.path, headers=[("Host", target.host_header), *headers])
        ) + conn.send(h11.EndOfMessage())
        self.requests_sent += 1
        await self._send(data)
        head, leftover = await self._read_head(conn)
        self._reset_body_state()
        self.content_length = _checked_length(head)
        self._pending = memoryview(leftover)
        connection_ok = keep_alive(head.http_version, head.get("connection"))
        if body_is_empty(method, head.status):
            self._remaining = 0
            self._reusable = connection_ok and not self._pending
        elif "chunked" in (head.get("transfer-encoding") or "").lower():
            self._h11 = conn
            self._remaining = None
            if self._pending:  # an empty receive_data() would tell h11 the peer closed
                conn.receive_data(bytes(self._pending))
            self._pending = memoryview(b"")
            self._reusable = connection_ok
        elif head.content_length is not None:
            self._remaining = head.content_length
            self._reusable = connection_ok
        else:
            self._remaining = None  # delimited by the server closing the connection
            self._reusable = False
        return head

    async def _send(self, data: bytes) -> None:
        try:
            with trio.fail_after(self.read_timeout):
                await self._stream.send_all(data)
        except trio.TooSlowError:
            raise RetryableSourceError(f"sending the request timed out after {self.read_timeout:g}s") from None
        except (trio.BrokenResourceError, OSError) as exc:
            raise RetryableSourceError(f"connection lost while sending the request: {reason(exc)}") from None

    async def _read_head(self, conn: h11.Connection) -> tuple[ResponseHead, bytes]:
        buffer = bytearray()
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                head_bytes, leftover = bytes(buffer[: end + 4]), bytes(buffer[end + 4 :])
                try:
                    conn.receive_data(head_bytes)
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    raise SourceError(f"malformed HTTP response head: {exc}") from None
                if isinstance(event, h11.InformationalResponse):
                    buffer = bytearray(leftover)  # 1xx: the real head follows
                    continue
                if not isinstance(event, h11.Response):
                    raise SourceError("malformed HTTP response head")
                return (
                    ResponseHead(
                        status=event.status_code,
                        reason=event.reason.decode("latin-1"),
                        http_version=event.http_version,
                        headers=headers_to_dict(event.headers),
                    ),
                    leftover,
                )
            if len(buffer) > MAX_HEAD_BYTES:
                raise SourceError(f"HTTP response head larger than {MAX_HEAD_BYTES} bytes")
            chunk = await self._receive_some(_HEAD_READ)
            if not chunk:
                if self.requests_sent > 1 and not buffer:
                    raise StaleConnection("server closed the idle connection")
                raise RetryableSourceError("connection closed before a response arrived")
            buffer += chunk

    # ---------------------------------------------------------------- body
    @property
    def body_remaining(self) -> int | None:
        return self._remaining

    async def readinto(self, buffer: memoryview) -> int:
        """Read body bytes into ``buffer``; 0 means the body is complete."""
        if self._h11 is not None:
            return await self._readinto_chunked(buffer)
        if self._remaining == 0 or not buffer:
            return 0
        want = len(buffer) if self._remaining is None else min(len(buffer), self._remaining)
        if self._pending:
            got = min(want, len(self._pending))
            buffer[:got] = self._pending[:got]
            self._pending = self._pending[got:]
        else:
            got = await self._recv_into(buffer[:want])
            if got == 0:
                if self._remaining is None:
                    self._remaining = 0
                    return 0
                raise RetryableSourceError(f"connection closed with {self._remaining} body bytes still to come")
        if self._remaining is not None:
            self._remaining -= got
        return got

    async def _readinto_chunked(self, buffer: memoryview) -> int:
        assert self._h11 is not None
        while not self._chunk:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise RetryableSourceError(f"malformed chunked body: {exc}") from None
            if event is h11.NEED_DATA:
                data = await self._receive_some(256 * 1024)
                if not data:
                    raise RetryableSourceError("connection closed in the middle of a chunked body")
                self._h11.receive_data(data)  # type: ignore[arg-type]  # h11 takes bytearray too; its hint says bytes
            elif isinstance(event, h11.Data):
                self._chunk = memoryview(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._remaining = 0
                self._h11 = None
                return 0
        got = min(len(buffer), len(self._chunk))
        buffer[:got] = self._chunk[:got]
        self._chunk = self._chunk[got:]
        return got

    async def _recv_into(self, buffer: memoryview) -> int:
        if self._socket is not None and len(buffer) >= THREAD_RECV_MIN:
            return await self._recv_into_thread(buffer)
        try:
            with trio.fail_after(self.read_timeout):
                if self._socket is not None:
                    return await self._socket.recv_into(buffer)
                data = await self._stream.receive_some(len(buffer))
        except trio.TooSlowError:
            raise RetryableSourceError(f"no data from the origin for {self.read_timeout:g}s") from None
        except (OSError, trio.BrokenResourceError) as exc:
            raise RetryableSourceError(f"connection lost: {reason(exc)}") from None
        buffer[: len(data)] = data
        return len(data)

    async def _recv_into_thread(self, buffer: memoryview) -> int:
        """Fill ``buffer`` (or up to the end of the stream) in a worker thread; silence for
        ``read_timeout`` is a timeout, as on the event loop.

        The thread works on a duplicate of the socket's descriptor, switched to blocking mode
        for the call (the mode belongs to the shared open file: it is switched back before the
        event loop may use the socket again). If the caller is cancelled meanwhile, the socket is
        shut down so the thread returns at once; nothing writes into ``buffer`` after this returns.
        """
        assert self._socket is not None
        try:
            limiter = _RECV_THREADS.get()
        except LookupError:
            limiter = trio.CapacityLimiter(16)
            _RECV_THREADS.set(limiter)
        fd = os.dup(self._socket.fileno())
        done = threading.Event()
        timeout = struct.pack("ll", int(self.read_timeout), int((self.read_timeout % 1) * 1_000_000))

        def receive() -> int:
            sock = socket.socket(fileno=fd)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
                os.set_blocking(fd, True)
                try:
                    return sock.recv_into(buffer, len(buffer), socket.MSG_WAITALL)
                finally:
                    os.set_blocking(fd, False)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 0))
            finally:
                sock.close()  # closes the duplicate only
                done.set()

        try:
            return await trio.to_thread.run_sync(receive, abandon_on_cancel=True, limiter=limiter)
        except BlockingIOError:  # SO_RCVTIMEO expired with nothing received
            raise RetryableSourceError(f"no data from the origin for {self.read_timeout:g}s") from None
        except OSError as exc:
            raise RetryableSourceError(f"connection lost: {reason(exc)}") from None
        except BaseException:  # cancelled: stop the thread before the buffer goes back to anyone
            if not done.is_set():
                self._reusable = False  # the body is cut off: aclose() closes it
                try:
                    self._socket.shutdown(socket.SHUT_RDWR)
                except OSError as exc:
                    if exc.errno != errno.ENOTCONN:
                        raise
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(done.wait)
            raise

    async def _receive_some(self, max_bytes: int) -> bytes | bytearray:
        try:
            with trio.fail_after(self.read_timeout):
                return await self._stream.receive_some(max_bytes)
        except trio.TooSlowError:
            raise RetryableSourceError(f"no response from the origin for {self.read_timeout:g}s") from None
        except (OSError, trio.BrokenResourceError) as exc:
            if self.requests_sent > 1:
                raise StaleConnection(f"connection lost: {reason(exc)}") from None
            raise RetryableSourceError(f"connection lost: {reason(exc)}") from None

    async def drain(self, limit: int = 64 * 1024) -> bool:
        """Read and drop a small remaining body so the connection can be reused."""
        if self._remaining is None or self._remaining > limit:
            return False
        scratch = memoryview(bytearray(max(1, min(limit, self._remaining))))
        while await self.readinto(scratch):
            pass
        return True

    @property
    def reusable(self) -> bool:
        return self._open and self._reusable and self._remaining == 0 and not self._pending

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await trio.aclose_forcefully(self._stream)


def _checked_length(head: ResponseHead) -> int | None:
    """The head's Content-Length, and its validators' lengths, checked once per response: an
    absurd value is this request's SourceError, never a surprise to whoever reads the head later."""
    for name in ("etag", "last-modified"):
        try:
            validator(head.get(name))
        except ValueError as exc:
            raise SourceError(f"unusable HTTP response head: {name}: {exc}") from None
    try:
        return head.content_length
    except ValueError as exc:
        raise SourceError(f"unusable HTTP response head: Content-Length: {exc}") from None


class StaleConnection(RetryableSourceError):
    """A reused keep-alive connection the server had already closed: retry at once."""
