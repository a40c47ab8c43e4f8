"""Fetching one piece from a parent peer, straight into the caller's buffer.

The HTTP plumbing is :class:`dffs.source.http.HttpSource`'s (keep-alive pool
per parent, h11 heads, ``recv_into`` bodies) through its ``exchange`` method;
this module adds the piece protocol's rules: what each status means and
that the bytes match their digest — the one the parent recorded
(``X-Dffs-Piece-Digest``) and the one the scheduler or SyncPieces promised.

A client never retries a parent: whatever goes wrong, the caller's move is
to ask another parent (or the origin), so every failure is raised at once
as a :class:`PeerError` naming the parent, the task and the piece.
"""

from __future__ import annotations

import ssl
import time
from typing import TypedDict

import trio

from dffs.digest import PIECE_DIGEST_SIZE, format_piece_digest, piece_digest
from dffs.errors import DffsError, DigestMismatch, RetryableSourceError, SourceError
from dffs.security.pieceauth import PieceAuth
from dffs.source.http import HttpOptions, HttpSource
from dffs.upload.protocol import HEADER_PIECE_DIGEST, host_port, parse_piece_digest, piece_path, piece_url

#: Pieces at least this big are hashed in a worker thread (BLAKE3 releases the
#: GIL), so the trio loop is never held for more than ~1 ms. Smaller ones are
#: hashed inline: on the 2-vCPU VM, 4 MiB pieces over loopback reached 2.3 GB/s
#: with inline hashing against 2.0 GB/s through a worker thread (one stream),
#: and 2.7 against 2.3 GB/s with four streams — the thread hop costs more than
#: the overlap wins there.
HASH_IN_THREAD_MIN = 8 * 1024 * 1024


class PeerError(DffsError):
    """A parent did not deliver a piece. Try another parent.

    ``retryable`` says whether the same parent may succeed later (busy,
    connection trouble); ``status`` is its HTTP answer when it gave one.
    """

    retryable = False

    def __init__(self, message: str, *, parent: str, task_id: str, number: int, status: int | None = None):
        super().__init__(message)
        self.parent = parent
        self.task_id = task_id
        self.number = number
        self.status = status


class _Where(TypedDict):
    """The piece a PeerError is about (its keyword arguments)."""

    parent: str
    task_id: str
    number: int


class ParentBusy(PeerError):
    """503: all the parent's upload slots are taken (it does not queue)."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class PieceNotAvailable(PeerError):
    """404: the parent does not have the piece (or dropped it as corrupt); 416: its task has no such piece."""


class ParentUnreachable(PeerError):
    """Cannot connect, timed out, or the connection broke mid-piece."""

    retryable = True


class PeerProtocolError(PeerError):
    """The parent's answer broke the piece protocol (wrong length, no digest, odd status)."""


class PieceDigestMismatch(PeerError, DigestMismatch):
    """The bytes, the parent's recorded digest and the expected digest do not all agree."""


def _as_digest(value: bytes | str | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        if value is not None and len(value) != PIECE_DIGEST_SIZE:
            raise ValueError(f"a piece digest is {PIECE_DIGEST_SIZE} bytes, got {len(value)}")
        return value
    return parse_piece_digest(value)


class PieceClient:
    """Downloads pieces from parents; one per process (it owns a keep-alive pool).

    Timeouts are short: a parent that cannot start within ``connect_timeout``
    or goes silent for ``read_timeout`` is worth abandoning for another.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_idle_per_parent: int = 4,
        hash_in_thread_min: int = HASH_IN_THREAD_MIN,
        auth: PieceAuth | None = None,
        host_id: str = "",
        min_rate: float = 256 * 1024,
        tls: ssl.SSLContext | None = None,
    ):
        #: Signs every request as this host (a member of the cluster); None: unsigned (--insecure).
        self.auth = auth
        self.host_id = host_id
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        #: A parent slower than this (bytes/s, beyond the timeouts) is given up on: a drip of bytes
        #: under the read timeout must not hold a piece for ever.
        self.min_rate = min_rate
        #: Client TLS context (with this member's certificate) when the data plane runs TLS.
        self.tls = tls
        self.http = HttpSource(
            HttpOptions(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                attempts=1,
                max_redirects=0,
                max_idle_per_origin=max_idle_per_parent,
                ssl_context=tls,
            )
        )
        self.hash_in_thread_min = hash_in_thread_min

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> PieceClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def fetch(
        self,
        host: str,
        port: int,
        task_id: str,
        number: int,
        buffer,
        *,
        expected_digest: bytes | str | None = None,
    ) -> bytes:
        """Receive piece ``number`` of ``task_id`` from the parent at ``host:port``
        into ``buffer`` (a writable buffer of exactly the piece's length).

        ``expected_digest`` (raw bytes or ``blake3:<hex>``) is what the
        scheduler or SyncPieces said the piece's digest is. Returns the raw
        BLAKE3 digest of the bytes received, which matched the parent's header
        and the expected digest. Raises a :class:`PeerError` otherwise; the
        buffer's contents are then undefined.
        """
        try:
            url = piece_url(host, port, task_id, number)
            if self.tls is not None:
                url = "https" + url[len("http") :]
            parent = host_port(host, port)
            expected = _as_digest(expected_digest)
        except ValueError as exc:  # what a parent or the scheduler said about it is malformed
            raise PeerProtocolError(
                f"piece {number} of task {task_id} from {host!r} port {port!r}: {exc}",
                parent=f"{host}:{port}",
                task_id=task_id,
                number=number,
            ) from None
        view = memoryview(buffer).cast("B")
        where = _Where(parent=parent, task_id=task_id, number=number)
        about = f"piece {number} of task {task_id} from parent {parent}"
        failure: PeerError | None = None
        headers = None
        if self.auth is not None:
            headers = {"Authorization": self.auth.sign("GET", piece_path(task_id, number), self.host_id, time.time())}
        deadline = self.connect_timeout + self.read_timeout + len(view) / self.min_rate
        try:
            with trio.fail_after(deadline):
                async with self.http.exchange("GET", url, headers=headers, follow_redirects=False) as (head, body):
                    if head.status == 200:
                        claimed, failure = self._check_head(head, len(view), expected, about, where)
                        if failure is None:
                            await _read_exactly(body, view)
                    elif head.status == 503:
                        failure = ParentBusy(
                            f"{about}: parent is busy (503)",
                            status=503,
                            retry_after=_retry_after(head.get("retry-after")),
                            **where,
                        )
                    elif head.status in (404, 416):
                        failure = PieceNotAvailable(
                            f"{about}: parent does not have it ({head.status})", status=head.status, **where
                        )
                    else:
                        answered = f"{about}: parent answered {head.status} {head.reason}".rstrip()
                        failure = PeerProtocolError(answered, status=head.status, **where)
        except trio.TooSlowError:
            raise ParentUnreachable(
                f"{about}: slower than {self.min_rate / 1024:.0f} KiB/s (gave up after {deadline:.0f}s)", **where
            ) from None
        except RetryableSourceError as exc:
            raise ParentUnreachable(f"{about}: {exc}", **where) from None
        except SourceError as exc:
            raise PeerProtocolError(f"{about}: {exc}", **where) from None
        if failure is not None:
            raise failure
        if len(view) >= self.hash_in_thread_min:
            actual = await trio.to_thread.run_sync(piece_digest, view)
        else:
            actual = piece_digest(view)
        if actual != claimed:
            raise PieceDigestMismatch(
                f"{about}: received bytes have digest {format_piece_digest(actual)}, "
                f"parent said {format_piece_digest(claimed)}",
                **where,
            )
        return actual

    @staticmethod
    def _check_head(head, length, expected, about, where) -> tuple[bytes, PeerError | None]:
        """The parent's claimed digest, or the reason not to read the body at all."""
        try:
            claimed = parse_piece_digest(head.get(HEADER_PIECE_DIGEST.lower()))
        except ValueError as exc:
            return b"", PeerProtocolError(f"{about}: {exc}", status=200, **where)
        if head.content_length != length:
            return claimed, PeerProtocolError(
                f"{about}: parent sends {head.content_length} bytes, the piece is {length}", status=200, **where
            )
        if expected is not None and claimed != expected:
            # No point receiving bytes that cannot match both.
            return claimed, PieceDigestMismatch(
                f"{about}: parent has digest {format_piece_digest(claimed)}, expected {format_piece_digest(expected)}",
                status=200,
                **where,
            )
        return claimed, None


async def _read_exactly(body, view: memoryview) -> None:
    filled = 0
    while filled < len(view):
        got = await body.readinto(view[filled:])
        if got == 0:
            raise RetryableSourceError(f"body ended {len(view) - filled} bytes short")
        filled += got


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
