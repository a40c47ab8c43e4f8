"""Credentials stay on the host that has them (pure).

A request's credentials — ``Authorization`` and friends, passwords in the URL,
the signature of a pre-signed URL — are used by the host that holds them to
talk to the origin, and go nowhere else: never to the scheduler (and so never
to a seed through a trigger, nor back out of ``StatTask``), never into a log.
A seed that cannot fetch an object without them answers that it cannot, and
the peer that holds them goes to the origin itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from dffs.idgen.taskid import DEFAULT_FILTERED_QUERY_PARAMS

#: Request headers that carry credentials (lower case).
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-amz-security-token",
        "x-amz-credential",
        "x-goog-iam-authorization-token",
        "x-api-key",
        "x-auth-token",
        "private-token",
        "x-registry-auth",
    }
)
#: Query parameters that sign a URL: the task ID rule's volatile ones but containerd's ``ns`` (so a
#: URL without them names the same task).
SIGNED_QUERY_PARAMS: tuple[str, ...] = tuple(p for p in DEFAULT_FILTERED_QUERY_PARAMS if p != "ns")
#: ... and, in log lines only, parameters that often carry a token (they are part of the object's
#: name for the task ID rule, so they do travel with the URL to the scheduler).
LOGGED_AS_REDACTED: tuple[str, ...] = SIGNED_QUERY_PARAMS + ("token", "access_token", "api_key", "apikey", "key")


def is_credential_header(name: str) -> bool:
    return name.lower() in CREDENTIAL_HEADERS


def shareable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` without those that carry credentials (what may travel to the scheduler)."""
    return {k: v for k, v in headers.items() if not is_credential_header(k)}


def _matches(name: str, params: tuple[str, ...]) -> bool:
    lowered = unquote_plus(name).lower()
    return any(lowered.startswith(p[:-1]) if p.endswith("*") else lowered == p for p in params)


def _strip(url: str, replacement: str | None, params: tuple[str, ...]) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]  # user:password@ never leaves
    segments = []
    for segment in parts.query.split("&"):
        if not segment:
            continue
        name, eq, _ = segment.partition("=")
        if _matches(name, params):
            if replacement is None:
                continue
            segment = f"{name}{eq}{replacement}"
        segments.append(segment)
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(segments), ""))


def shareable_url(url: str) -> str:
    """``url`` without its credentials: what may travel to the scheduler (same task ID, by the ID rule)."""
    return _strip(url, None, SIGNED_QUERY_PARAMS)


def redact_url(url: str) -> str:
    """``url`` for a log line: credentials replaced by ``REDACTED``, so a reader still sees they were there."""
    return _strip(url, "REDACTED", LOGGED_AS_REDACTED)


_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_HEADER_NAMES = "|".join(re.escape(h) for h in sorted(CREDENTIAL_HEADERS))
#: ``Authorization: Bearer x``, ``'cookie': 'a=b'``, ``cookie=abc``: the name, its separator, then one or two words.
_HEADER_IN_TEXT = re.compile(rf"(?i)\b({_HEADER_NAMES})(['\"]?\s*[:=]\s*['\"]?)([^'\",}}\s]+(?: [^'\",}}\s]+)?)")


def redact_text(text: str) -> str:
    """A log line with every URL's credentials and every credential header's value replaced."""
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    return _HEADER_IN_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}REDACTED", text)
