"""Pure HTTP/1.1 rules the client applies to responses. No sockets here.

Framing and header syntax are h11's job; this module decides what a
response *means* for a download: is it the range we asked for, may the
connection be reused, is it worth retrying, where does a redirect go.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import urljoin, urlsplit

import attrs

from dffs.bounds import MAX_OBJECT_SIZE, parse_size
from dffs.errors import UsageError
from dffs.security.redact import CREDENTIAL_HEADERS  # one list: redirects drop what logs redact

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d{1,20})-(\d{1,20})/(\d{1,20}|\*)\s*$", re.IGNORECASE)
DEFAULT_PORTS = {"http": 80, "https": 443}


@attrs.frozen
class Target:
    """Where to connect and what to put on the request line."""

    scheme: str
    host: str
    port: int
    path: str  # path plus query, never empty

    @property
    def origin_key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def parse_target(url: str) -> Target:
    """Split an http(s) URL; UsageError with a clear message if it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"malformed URL {url!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UsageError(f"unsupported URL scheme {parts.scheme!r} in {url!r}")
    if not parts.hostname:
        raise UsageError(f"malformed URL {url!r}: no host")
    if any(c in url for c in "\r\n\x00 "):
        raise UsageError(f"malformed URL {url!r}: contains whitespace or control characters")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, parts.hostname, port or DEFAULT_PORTS[scheme], path)


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    """``bytes a-b/total`` → (a, b inclusive, total or None); ValueError if malformed."""
    match = _CONTENT_RANGE_RE.match(value)
    if not match:
        raise ValueError(f"malformed Content-Range {value!r}")
    start, end = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if end < start or (total is not None and end >= total):
        raise ValueError(f"inconsistent Content-Range {value!r}")
    if end >= MAX_OBJECT_SIZE or (total is not None and total > MAX_OBJECT_SIZE):
        raise ValueError(f"Content-Range {value!r} is past the {MAX_OBJECT_SIZE}-byte object limit")
    return start, end, total


def range_header(offset: int, length: int | None) -> str:
    """The Range value for ``length`` bytes at ``offset`` (to the end if None)."""
    if length is None:
        return f"bytes={offset}-"
    return f"bytes={offset}-{offset + length - 1}"


def redirect_url(base: str, location: str | None) -> str:
    """Where a redirect from ``base`` goes; ValueError for none, or for a step down from https to http."""
    if not location:
        raise ValueError("redirect without a Location header")
    target = urljoin(base, location)
    if urlsplit(base).scheme.lower() == "https" and urlsplit(target).scheme.lower() == "http":
        raise ValueError(f"refusing a redirect from https to plain http ({target})")
    return target


def same_origin(a: str, b: str) -> bool:
    """Whether two URLs reach the same (scheme, host, port); False when either is malformed."""

    def key(url: str) -> tuple[str, str | None, int | None]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return scheme, parts.hostname, parts.port or DEFAULT_PORTS.get(scheme)

    try:
        return key(a) == key(b)
    except ValueError:
        return False


def forwarded_headers(from_url: str, to_url: str, headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers to send to ``to_url`` when ``from_url`` redirected there:
    all of them on the same origin, none that carry credentials on another
    (as browsers and curl do: a redirect must not hand a token to a third party)."""
    if same_origin(from_url, to_url):
        return dict(headers)
    return {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}


def keep_alive(http_version: bytes, connection_header: str | None) -> bool:
    """Whether the server lets us reuse the connection after this response."""
    tokens = {t.strip().lower() for t in (connection_header or "").split(",")}
    if http_version == b"1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def body_is_empty(method: str, status: int) -> bool:
    return method == "HEAD" or status in (204, 304) or 100 <= status < 200


@attrs.frozen
class ResponseHead:
    status: int
    reason: str
    http_version: bytes
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "

    def get(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def content_length(self) -> int | None:
        """The body's length; ValueError when it is not a sane byte count (checked once per response)."""
        value = self.headers.get("content-length")
        return parse_size(value) if value is not None else None


def headers_to_dict(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    result: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        result[key] = f"{result[key]}, {text}" if key in result else text
    return result


def describe_status(head: ResponseHead) -> str:
    return f"{head.status} {head.reason}".strip()
