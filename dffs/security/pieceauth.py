"""Signed piece requests: the data plane's authentication (pure).

Piece bytes go from a parent's content file to the socket by ``sendfile``;
TLS would cost that (Python 3.11 has no kernel TLS), and the bytes' integrity
does not need it: a child checks every piece against the digest anchored at
the scheduler (docs/security.md). What the data plane needs is to serve only
members. A child signs each request with the cluster's piece key (HMAC-SHA256
over method, target, its host ID and the time); the parent checks the
signature and that the time is within ``MAX_SKEW`` of its own clock.

Header: ``Authorization: DffsPiece HOST_ID:UNIX_SECONDS:HEX``.
"""

from __future__ import annotations

import hashlib
import hmac
import re

SCHEME = "DffsPiece"
#: How far a request's time may be from the server's clock (and so how long a captured request replays).
MAX_SKEW = 300

_HEADER = re.compile(r"DffsPiece ([0-9A-Za-z._-]{1,128}):([0-9]{1,12}):([0-9a-f]{64})")


class PieceAuthError(Exception):
    """A piece request without a valid signature."""


class PieceAuth:
    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("piece auth key too short")
        self._key = key

    def _mac(self, method: str, target: str, host_id: str, timestamp: int) -> str:
        message = f"{method}\n{target}\n{host_id}\n{timestamp}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, method: str, target: str, host_id: str, now: float) -> str:
        """The Authorization header value for one request."""
        timestamp = int(now)
        return f"{SCHEME} {host_id}:{timestamp}:{self._mac(method, target, host_id, timestamp)}"

    def verify(self, header: str | None, method: str, target: str, now: float) -> str:
        """The signer's host ID; PieceAuthError if the header is missing, malformed, forged or stale."""
        if not header:
            raise PieceAuthError("no piece request signature (a cluster member signs every request)")
        match = _HEADER.fullmatch(header.strip())
        if match is None:
            raise PieceAuthError("malformed piece request signature")
        host_id, timestamp_text, mac = match.groups()
        timestamp = int(timestamp_text)
        if abs(now - timestamp) > MAX_SKEW:
            raise PieceAuthError(f"piece request signed {now - timestamp:+.0f}s from now (clock skew or a replay)")
        if not hmac.compare_digest(mac, self._mac(method, target, host_id, timestamp)):
            raise PieceAuthError("bad piece request signature (not signed with this cluster's key)")
        return host_id
