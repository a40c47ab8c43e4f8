"""The piece data plane's wire rules: URLs, request validation, response headers. No I/O.

Piece bytes travel between peers over plain HTTP/1.1, never inside protobuf
messages. The surface is deliberately tiny::

    GET  /pieces/{task_id}/{number}     one whole piece
    HEAD /pieces/{task_id}/{number}     the same head, no body

``task_id`` is exactly 64 lowercase hex digits; ``number`` a decimal piece
number (``0`` or no leading zeros, at most 2**32 - 1: piece numbers are
uint32 in the protos). Nothing else is accepted in the request target — no
query, no fragment, no percent-encoding, no ``..``, no extra or empty
segments — so there is exactly one spelling of every piece and nothing for a
path-traversal trick to work with. No ``Range`` either: the unit of transfer
is one piece, and a Range header is ignored (RFC 9110 lets a server do so).

A 200 answer carries::

    Content-Length: <piece length>
    X-Dffs-Piece-Digest: blake3:<hex>     the digest the serving peer recorded
    X-Dffs-Task-Length: <task length>
    X-Dffs-Piece-Length: <task piece length>

and errors are small ``text/plain`` bodies:

=====  ==========================================================  ===========
 400   malformed target or request (bad id, bad number, traversal)  BadRequest
 404   unknown resource, unknown task, piece not present/corrupt    NotFound
 405   a method other than GET/HEAD (``Allow: GET, HEAD``)          MethodNotAllowed
 416   number beyond the task's last piece (peers disagree on it)  PieceOutOfRange
 503   upload slots full; ``Retry-After``: pick another parent      Busy
=====  ==========================================================  ===========

Like h11, this module is a set of pure functions and values: the server and
the client do the I/O (``server.py``, ``client.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

from dffs.digest import PIECE_DIGEST_ALGORITHM, PIECE_DIGEST_SIZE, format_piece_digest
from dffs.idgen.taskid import is_task_id

PIECES_PREFIX = "/pieces/"
MAX_PIECE_NUMBER = 2**32 - 1

HEADER_PIECE_DIGEST = "X-Dffs-Piece-Digest"
HEADER_TASK_LENGTH = "X-Dffs-Task-Length"
HEADER_PIECE_LENGTH = "X-Dffs-Piece-Length"

METHODS = ("GET", "HEAD")

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    401: "Unauthorized",
    405: "Method Not Allowed",
    408: "Request Timeout",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

# At most 10 digits before int(): a 10,000-digit "number" costs nothing to refuse.
_NUMBER_RE = re.compile(r"0|[1-9][0-9]{0,9}")
_DIGEST_RE = re.compile(rf"{PIECE_DIGEST_ALGORITHM}:([0-9a-fA-F]{{{2 * PIECE_DIGEST_SIZE}}})")
# Visible ASCII except the characters that would open another spelling of a path.
_FORBIDDEN_IN_TARGET = frozenset("%?#\\;")


# ------------------------------------------------------------------ requests
@attrs.frozen
class PieceRequest:
    """A valid request for one piece."""

    method: str  #: "GET" or "HEAD"
    task_id: str
    number: int

    @property
    def is_head(self) -> bool:
        return self.method == "HEAD"


class PieceRequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP answer.

    ``code`` names the reason in the server's counters and logs; ``close``
    says whether the connection ends after the answer (only when the request
    itself cannot be trusted to have been framed right).
    """

    status = 400
    code = "bad_request"
    close = False

    def headers(self) -> list[tuple[str, str]]:
        """Extra response headers this answer carries."""
        return []


class BadRequest(PieceRequestError):
    status, code = 400, "bad_request"


class MalformedHttp(BadRequest):
    """The HTTP framing itself was broken (h11 refused it): answer and close."""

    code, close = "malformed", True

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status if status in (400, 431) else 400
        if self.status == 431:
            self.code = "headers_too_large"


class NotFound(PieceRequestError):
    status, code = 404, "not_found"


class Unauthorized(PieceRequestError):
    """The request is not signed by a member of this cluster (dffs.security.pieceauth)."""

    status, code = 401, "unauthorized"

    def headers(self) -> list[tuple[str, str]]:
        return [("WWW-Authenticate", "DffsPiece")]


class PieceCorrupt(NotFound):
    """The piece failed its digest check here and was dropped: it is not present any more."""

    code = "corrupt"


class MethodNotAllowed(PieceRequestError):
    status, code = 405, "method"

    def headers(self) -> list[tuple[str, str]]:
        return [("Allow", ", ".join(METHODS))]


class PieceOutOfRange(PieceRequestError):
    """The number is past the task's last piece: the peers disagree about the task."""

    status, code = 416, "out_of_range"

    def __init__(self, message: str, *, task_length: int, piece_length: int):
        super().__init__(message)
        self.task_length = task_length
        self.piece_length = piece_length

    def headers(self) -> list[tuple[str, str]]:
        return [(HEADER_TASK_LENGTH, str(self.task_length)), (HEADER_PIECE_LENGTH, str(self.piece_length))]


class Busy(PieceRequestError):
    """Every upload slot is taken. Not queued: the downloader should pick another parent."""

    status, code = 503, "busy"

    def __init__(self, message: str, *, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]


def parse_target(target: bytes | str) -> tuple[str, int]:
    """``/pieces/{task_id}/{number}`` → (task_id, number); NotFound or BadRequest otherwise.

    A target outside ``/pieces/`` is an unknown resource (404); one inside it
    that is not exactly a task id and a piece number is malformed (400).
    """
    if isinstance(target, bytes):
        try:
            target = target.decode("ascii")
        except UnicodeDecodeError:
            raise BadRequest("request target is not ASCII") from None
    if not target.startswith("/"):
        raise BadRequest("request target must be a path (origin-form)")
    if any(c in _FORBIDDEN_IN_TARGET or not ("!" <= c <= "~") for c in target):
        raise BadRequest("request target may not hold a query, fragment, escapes or odd characters")
    segments = target[1:].split("/")
    if ".." in segments or "." in segments:
        raise BadRequest("request target may not hold dot segments")
    if segments[0] != PIECES_PREFIX.strip("/"):
        raise NotFound(f"no such resource {target!r}")
    if len(segments) != 3:
        raise BadRequest("expected /pieces/{task_id}/{number}")
    _, task_id, number_text = segments
    if not is_task_id(task_id):
        raise BadRequest("task id must be 64 lowercase hex digits")
    if not _NUMBER_RE.fullmatch(number_text):
        raise BadRequest("piece number must be a decimal number without sign or leading zeros")
    number = int(number_text)
    if number > MAX_PIECE_NUMBER:
        raise BadRequest(f"piece number {number} is over {MAX_PIECE_NUMBER}")
    return task_id, number


def parse_request(method: bytes | str, target: bytes | str) -> PieceRequest:
    """Validate a request line (as h11 hands it over); raises a PieceRequestError.

    The target is judged first: a garbage path is a 400 whatever the method.
    Methods are case-sensitive (RFC 9110), so ``get`` is a 405.
    """
    task_id, number = parse_target(target)
    if isinstance(method, bytes):
        method = method.decode("ascii", "replace")
    if method not in METHODS:
        raise MethodNotAllowed(f"method {method} not allowed")
    return PieceRequest(method, task_id, number)


def check_piece_number(number: int, *, task_length: int, piece_length: int, piece_count: int) -> None:
    """PieceOutOfRange unless ``number`` names one of the task's pieces."""
    if number >= piece_count:
        raise PieceOutOfRange(
            f"piece {number} is past the task's last piece ({piece_count} pieces)",
            task_length=task_length,
            piece_length=piece_length,
        )


def has_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether request headers (h11's lower-cased pairs) announce a body; piece requests have none."""
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip() != b"0":
            return True
    return False


# ----------------------------------------------------------------- responses
def piece_headers(*, length: int, digest: bytes, task_length: int, piece_length: int) -> list[tuple[str, str]]:
    """Headers of a 200 answer for a piece of ``length`` bytes."""
    return [
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", str(length)),
        (HEADER_PIECE_DIGEST, format_piece_digest(digest)),
        (HEADER_TASK_LENGTH, str(task_length)),
        (HEADER_PIECE_LENGTH, str(piece_length)),
    ]


def error_body(error: PieceRequestError) -> bytes:
    """The one-line text body of an error answer."""
    return f"{error.status} {REASONS.get(error.status, '')}: {error}\n".encode("utf-8", "replace")


def reason_phrase(status: int) -> bytes:
    return REASONS.get(status, "").encode("ascii")


# -------------------------------------------------------------- client side
def parse_piece_digest(value: str | None) -> bytes:
    """``blake3:<64 hex>`` → the raw 32-byte digest; ValueError if missing or malformed."""
    match = _DIGEST_RE.fullmatch((value or "").strip())
    if not match:
        raise ValueError(f"malformed piece digest {value!r} (expected {PIECE_DIGEST_ALGORITHM}:<hex>)")
    return bytes.fromhex(match.group(1))


def piece_path(task_id: str, number: int) -> str:
    """The request target for a piece; ValueError if the task id or number is not valid."""
    if not is_task_id(task_id):
        raise ValueError(f"invalid task id {task_id!r}")
    if not (isinstance(number, int) and 0 <= number <= MAX_PIECE_NUMBER):
        raise ValueError(f"invalid piece number {number!r}")
    return f"{PIECES_PREFIX}{task_id}/{number}"


def host_port(host: str, port: int) -> str:
    """``host:port`` with an IPv6 literal in brackets (``[::1]:4000``)."""
    if not host or any(c in host for c in "/?#@% \r\n\t"):
        raise ValueError(f"invalid peer address {host!r}")
    if not (isinstance(port, int) and 0 < port < 65536):
        raise ValueError(f"invalid port {port!r}")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def piece_url(host: str, port: int, task_id: str, number: int) -> str:
    """``http://{host}:{port}/pieces/{task_id}/{number}``; IPv6 literals are bracketed.

    IPv6 zone ids (``fe80::1%eth0``) are not supported.
    """
    return f"http://{host_port(host, port)}{piece_path(task_id, number)}"
