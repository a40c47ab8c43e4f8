"""The task-ID rule.

A task is one remote object. Every peer must derive the same ID for the same
object or sharing silently stops, so the rule is deliberately small and fixed:

    sha256( normalized_url | tag | application | piece_length )

where ``normalized_url`` is the URL with *volatile* query parameters removed
(pre-signed URL signatures and expiries, containerd's ``ns``) and the rest kept
in their original order. Two signed URLs for the same S3 object therefore map to
one task, while ``?version=1`` and ``?version=2`` stay distinct.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from urllib.parse import unquote_plus, urlsplit, urlunsplit

#: What a task ID looks like on the wire: a sha256, 64 lowercase hex digits.
TASK_ID_PATTERN = re.compile(r"[0-9a-f]{64}")


def is_task_id(text: str) -> bool:
    """Whether ``text`` is a well-formed task ID (checked before it names a path or a lookup)."""
    return TASK_ID_PATTERN.fullmatch(text) is not None


#: Query parameters that change between requests for the same bytes. Matched
#: case-insensitively; an entry ending in ``*`` matches by prefix.
DEFAULT_FILTERED_QUERY_PARAMS: tuple[str, ...] = (
    # AWS SigV2 / SigV4 pre-signed URLs
    "x-amz-*",
    "awsaccesskeyid",
    "signature",
    "expires",
    # Google Cloud Storage
    "x-goog-*",
    "googleaccessid",
    # Azure SAS tokens
    "sig",
    "se",
    "st",
    "sp",
    "sv",
    "sr",
    "spr",
    "skoid",
    "sktid",
    # Alibaba OSS
    "ossaccesskeyid",
    "security-token",
    # containerd's mirror namespace hint
    "ns",
)


def _is_filtered(name: str, filters: Iterable[str]) -> bool:
    lowered = name.lower()
    for pattern in filters:
        if pattern.endswith("*"):
            if lowered.startswith(pattern[:-1]):
                return True
        elif lowered == pattern:
            return True
    return False


def normalize_url(url: str, filtered_query_params: Iterable[str] = DEFAULT_FILTERED_QUERY_PARAMS) -> str:
    """Return ``url`` without volatile query parameters and without a fragment.

    Scheme and host are lower-cased (they are case-insensitive); the path and
    the remaining query keep their exact bytes and order.
    """
    parts = urlsplit(url)
    filters = tuple(p.lower() for p in filtered_query_params)
    # Filter raw "k=v" segments so the kept ones keep their exact escaping.
    kept = [
        segment
        for segment in parts.query.split("&")
        if segment and not _is_filtered(unquote_plus(segment.partition("=")[0]), filters)
    ]
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, "&".join(kept), ""))


def task_id(
    url: str,
    *,
    tag: str = "",
    application: str = "",
    piece_length: int | None = None,
    filtered_query_params: Iterable[str] = DEFAULT_FILTERED_QUERY_PARAMS,
) -> str:
    """The 64-hex-digit ID of the task that downloads ``url``."""
    h = hashlib.sha256()
    for part in (
        normalize_url(url, filtered_query_params),
        tag,
        application,
        "" if piece_length is None else str(piece_length),
    ):
        encoded = part.encode("utf-8", "surrogateescape")
        # Length-prefix each field so ("ab", "c") and ("a", "bc") differ.
        h.update(len(encoded).to_bytes(8, "big"))
        h.update(encoded)
    return h.hexdigest()
