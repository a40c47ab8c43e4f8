"""The registry token dance (distribution's token auth), as pure functions.

A registry answers 401 with ``WWW-Authenticate: Bearer realm="...",service="...",scope="..."``;
the client asks the realm for a token and retries with ``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode, urlsplit

from dffs.errors import SourceError

_PARAM = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``(scheme lowercased, {param: value})`` of one WWW-Authenticate challenge."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m[1].lower(): (m[2] if m[2] is not None else m[3]).replace('\\"', '"') for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


def token_request_url(params: dict[str, str], repository: str) -> str:
    """The realm URL with service and scope for pulling ``repository``."""
    realm = params.get("realm", "")
    parts = urlsplit(realm)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(f"registry token realm {realm!r} is not an http(s) URL")
    query = {}
    if params.get("service"):
        query["service"] = params["service"]
    query["scope"] = params.get("scope") or f"repository:{repository}:pull"
    return realm + ("&" if parts.query else "?") + urlencode(query)


def parse_token_response(body: bytes) -> str:
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        raise SourceError("registry token service answered something that is not JSON") from None
    token = answer.get("token") or answer.get("access_token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        raise SourceError("registry token service answered without a token")
    return token
