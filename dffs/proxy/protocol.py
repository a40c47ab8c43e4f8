"""Pure HTTP rules of the proxy: byte ranges, and which headers cross it. No sockets.

h11 frames messages; this module decides what a Range asks for, and which
headers a proxy may pass on (RFC 9110 §7.6.1: hop-by-hop headers, and those
a ``Connection`` header names, stop at the proxy).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@attrs.frozen
class ByteRange:
    """Bytes ``start`` to ``end`` inclusive of an object of ``size`` bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


class Unsatisfiable:
    """A valid Range that covers no byte of the object: answer 416."""

    def __repr__(self) -> str:
        return "UNSATISFIABLE"


UNSATISFIABLE = Unsatisfiable()


def parse_range(value: str | None, size: int) -> ByteRange | Unsatisfiable | None:
    """What a ``Range`` header asks of an object of ``size`` bytes.

    None means "send the whole object with 200": no header, a unit other than
    bytes, several ranges, or a syntax error (RFC 9110 §14.2 lets a server
    ignore any of these). Suffix ranges (``bytes=-N``) and open ranges
    (``bytes=N-``) are supported; an end past the object is clipped.
    """
    if value is None:
        return None
    match = _RANGE_RE.match(value)
    if not match:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return ByteRange(max(0, size - n), size - 1, size)
    start = int(first)
    if last and int(last) < start:
        return None  # syntactically invalid: ignore
    if start >= size:
        return UNSATISFIABLE
    end = min(int(last), size - 1) if last else size - 1
    return ByteRange(start, end, size)


def connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def end_to_end(headers: Iterable[tuple[str, str]], *, drop: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The headers a proxy passes on: without hop-by-hop ones, those ``Connection``
    names, and any in ``drop`` (lower-case names)."""
    headers = list(headers)
    dropped = HOP_BY_HOP | connection_tokens(headers) | {d.lower() for d in drop}
    return [(name, value) for name, value in headers if name.lower() not in dropped]


def header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of header ``name`` (case-insensitive), or None."""
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
