"""Routing: what the proxy does with one request head. Pure — no sockets, no trio.

Three kinds of request reach the proxy port:

* ``CONNECT host:port`` — an HTTPS tunnel, passed through byte for byte.
* absolute-form ``GET http://host/path`` — a plain forward proxy: through P2P
  when a rule matches, otherwise straight to the origin.
* origin-form ``GET /v2/...`` — registry-mirror mode (containerd's
  ``hosts.toml`` names the proxy as a mirror). The upstream registry is the one
  ``?ns=`` names (containerd adds it to every mirror request), else the
  configured ``--registry-mirror``. Blobs go through P2P under the task ID of
  the upstream blob URL, the same on every host; ``?ns=`` never reaches the
  upstream nor the task ID. Everything else (``/v2/`` version checks,
  manifests, tags, catalog) passes through with its ``Authorization``
  untouched, so the bearer-token dance works as if the proxy were not there.

:func:`route` returns one of :class:`Reject`, :class:`Tunnel`,
:class:`Passthrough`, :class:`ViaP2P`.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlsplit

import attrs
import h11

from dffs.errors import UsageError
from dffs.proxy.protocol import end_to_end, header
from dffs.proxy.rules import ProxyRules

#: distribution's repository-name grammar (path components of lower-case
#: alphanumerics joined by separators) and digest forms. No "..", "%" or "//"
#: can match, so a blob path can never climb out of ``/v2/``.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
BLOB_PATH_RE = re.compile(
    rf"^/v2/(?P<name>{_COMPONENT}(?:/{_COMPONENT})*)/blobs/(?P<digest>sha256:[0-9a-f]{{64}}|sha512:[0-9a-f]{{128}})$"
)
#: Characters a registry API path may contain (names, tags, digests, ``_catalog``).
_REGISTRY_PATH_RE = re.compile(r"^/v2(/[A-Za-z0-9._:@+-]+)*/?$")
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$"
)
_DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io"}
_DOCKER_HUB_UPSTREAM = "https://registry-1.docker.io"
#: Request headers that reach the origin of a P2P download (and go to the seed with the
#: task), but never into the task ID.
P2P_REQUEST_HEADERS = ("authorization",)


@attrs.frozen
class RequestHead:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    #: The request declares a body (Content-Length > 0 or Transfer-Encoding).
    has_body: bool = False

    @classmethod
    def from_h11(cls, event: h11.Request) -> RequestHead:
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)
        length = header(headers, "content-length")
        has_body = header(headers, "transfer-encoding") is not None or (length is not None and length.strip() != "0")
        return cls(event.method.decode("latin-1").upper(), event.target.decode("latin-1"), headers, has_body)


@attrs.frozen
class Reject:
    status: int
    message: str


@attrs.frozen
class Tunnel:
    host: str
    port: int


@attrs.frozen
class Passthrough:
    """Send the request to ``url`` as it is (end-to-end headers only) and relay the answer."""

    url: str
    headers: tuple[tuple[str, str], ...]


@attrs.frozen
class ViaP2P:
    """Serve from the task of ``url`` (pieces, P2P); ``passthrough`` is the same request
    sent straight to the origin, used when the origin refuses it (401, 404...) so the
    client sees the origin's own answer."""

    url: str
    #: Headers that reach the origin with the download (Authorization), not in the task ID.
    headers: tuple[tuple[str, str], ...]
    #: The blob's digest (``sha256:…``) when the URL is a registry blob: checked once complete.
    digest: str | None
    head: bool
    range: str | None
    if_range: str | None
    passthrough: Passthrough


Route = Reject | Tunnel | Passthrough | ViaP2P


def normalize_upstream(url: str) -> str:
    """A configured ``--registry-mirror`` as ``scheme://host[:port]`` (UsageError if it is not one)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
        raise UsageError(f"bad --registry-mirror {url!r}: expected http(s)://HOST[:PORT]")
    return f"{parts.scheme}://{parts.netloc.lower()}"


@attrs.frozen
class Router:
    rules: ProxyRules
    #: Normalized ``--registry-mirror`` (see :func:`normalize_upstream`), or None.
    upstream: str | None = None
    #: ``host:port`` strings that name this proxy: absolute-form requests to them are
    #: served as origin-form (never relayed to ourselves in a loop).
    own_authorities: frozenset[str] = frozenset()

    def route(self, request: RequestHead) -> Route:
        method, target = request.method, request.target
        if method == "CONNECT":
            return self._connect(target)
        if target.startswith("/"):
            return self._mirror(request, target)
        if "://" in target:
            return self._forward(request, target)
        return Reject(400, f"unsupported request target {target[:200]!r}")

    # ------------------------------------------------------------ CONNECT
    def _connect(self, authority: str) -> Route:
        host, port = _split_authority(authority)
        if host is None or port is None or not 0 < port < 65536:
            return Reject(400, f"CONNECT needs HOST:PORT, got {authority[:200]!r}")
        if self._is_self(f"{host}:{port}"):
            return Reject(508, "CONNECT to the proxy itself")
        return Tunnel(host.strip("[]"), port)

    # --------------------------------------------------------- forward proxy
    def _forward(self, request: RequestHead, url: str) -> Route:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (validates the port)
        except ValueError:
            return Reject(400, f"malformed URL {url[:200]!r}")
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            return Reject(400, f"unsupported URL scheme {parts.scheme[:20]!r}")
        if not parts.hostname or not _HOST_RE.match(parts.netloc.rpartition("@")[2]) or "@" in parts.netloc:
            return Reject(400, f"malformed URL {url[:200]!r}")
        if self._is_self(parts.netloc):
            path = parts.path or "/"
            return self._mirror(request, f"{path}?{parts.query}" if parts.query else path)
        if _has_dot_segments(parts.path):
            return Reject(400, f"path traversal in {url[:200]!r}")
        headers = _pass_headers(request)
        passthrough = Passthrough(url, headers)
        if self.rules.via_p2p(request.method, url):
            if request.has_body:
                return Reject(400, "a GET or HEAD with a body")
            match = BLOB_PATH_RE.match(parts.path)
            return self._p2p(request, url, match.group("digest") if match else None, passthrough)
        return passthrough

    # ---------------------------------------------------------- mirror mode
    def _mirror(self, request: RequestHead, target: str) -> Route:
        path, _, query = target.partition("?")
        if _has_dot_segments(path) or "//" in path or not _REGISTRY_PATH_RE.match(path):
            if path.startswith("/v2") and ("." in path or "%" in path or "\\" in path or "//" in path):
                return Reject(400, f"bad registry path {path[:200]!r}")
            return Reject(404, f"not a registry API path: {path[:200]!r}")
        if request.method not in ("GET", "HEAD"):
            return Reject(405, f"{request.method} is not allowed through the registry mirror (pull only)")
        try:
            params = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
        except ValueError:
            return Reject(400, "malformed query string")
        ns = [v for k, v in params if k == "ns"]
        upstream = self._upstream_for(ns[-1] if ns else None)
        if isinstance(upstream, Reject):
            return upstream
        rest = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params if k != "ns")
        url = f"{upstream}{path}" + (f"?{rest}" if rest else "")
        passthrough = Passthrough(url, _pass_headers(request))
        if request.has_body:
            return Reject(400, f"a {request.method} with a body")
        if self.rules.via_p2p(request.method, url):
            match = BLOB_PATH_RE.match(path)
            return self._p2p(request, url, match.group("digest") if match else None, passthrough)
        return passthrough

    def _upstream_for(self, ns: str | None) -> str | Reject:
        if ns is None:
            if self.upstream is None:
                return Reject(
                    404, "no upstream registry: start the daemon with --registry-mirror URL, or send ?ns=REGISTRY"
                )
            return self.upstream
        if not _HOST_RE.match(ns):
            return Reject(400, f"bad ns parameter {ns[:100]!r}")
        host = ns.lower()
        if self.upstream is not None and urlsplit(self.upstream).netloc == host:
            return self.upstream
        if host in _DOCKER_HUB:
            return _DOCKER_HUB_UPSTREAM
        if self._is_self(host):
            return Reject(508, f"ns={ns} names the proxy itself")
        return f"https://{host}"

    # ----------------------------------------------------------------- P2P
    def _p2p(self, request: RequestHead, url: str, digest: str | None, passthrough: Passthrough) -> ViaP2P:
        auth = tuple((k, v) for k, v in request.headers if k.lower() in P2P_REQUEST_HEADERS)
        return ViaP2P(
            url=url,
            headers=auth,
            digest=digest,
            head=request.method == "HEAD",
            range=header(request.headers, "range"),
            if_range=header(request.headers, "if-range"),
            passthrough=passthrough,
        )

    def _is_self(self, authority: str) -> bool:
        authority = authority.lower()
        return authority in self.own_authorities or (
            ":" not in authority.rpartition("]")[2] and f"{authority}:80" in self.own_authorities
        )


def _pass_headers(request: RequestHead) -> tuple[tuple[str, str], ...]:
    return tuple(end_to_end(request.headers, drop=("host",)))


def _split_authority(authority: str) -> tuple[str | None, int | None]:
    if not _HOST_RE.match(authority):
        return None, None
    host, sep, port = authority.rpartition(":")
    if not sep or not port.isdigit() or (host.count(":") and not host.startswith("[")):
        return None, None
    return host, int(port)


def _has_dot_segments(path: str) -> bool:
    lowered = path.lower().replace("%2e", ".").replace("%2f", "/").replace("%5c", "/").replace("\\", "/")
    return any(segment in (".", "..") for segment in lowered.split("/"))
