"""The proxy's settings, with documented defaults (the daemon builds them from its own config)."""

from __future__ import annotations

import attrs

DEFAULT_PROXY_PORT = 4001

#: URLs that go through P2P unless configured otherwise: registry blobs, which
#: are content-addressed (same digest, same bytes, on every host). Matched with
#: ``re.search`` against the URL without volatile query parameters (``ns``, signatures).
DEFAULT_P2P_RULES: tuple[str, ...] = (r"/v2/.+/blobs/sha(256|512):[0-9a-f]+$",)


def _strings(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)


@attrs.frozen
class ProxyConfig:
    #: None: the default port (4001), best effort — if it is taken the daemon runs without a
    #: proxy and says so. An explicit port must bind or the daemon fails; 0 picks a free one.
    port: int | None = None
    #: Address to listen on. Loopback by default: anything wider needs ``allow``.
    listen: str = "127.0.0.1"
    #: Upstream registry for mirror mode (``http://10.0.0.5:5000``), used when a request's
    #: ``?ns=`` does not name another one.
    registry_mirror: str | None = None
    #: URL regexes whose GET/HEAD go through P2P; everything else passes straight through.
    rules: tuple[str, ...] = attrs.field(default=DEFAULT_P2P_RULES, converter=_strings)
    #: Hosts (fnmatch patterns, ``*.corp`` or ``10.0.0.5``) that never go through P2P.
    bypass: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    #: Client networks (CIDR) allowed besides loopback, which is always allowed.
    allow: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    #: Concurrent client connections; beyond it a client gets 503 at once.
    max_connections: int = 512
    #: A request head must arrive complete within this many seconds.
    head_timeout: float = 10.0
    #: A keep-alive connection may idle this long between requests.
    idle_timeout: float = 60.0
    #: Upstream connect timeout, and the longest upstream silence.
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    #: Longest wait for one piece while streaming a P2P response.
    piece_timeout: float = 120.0
    #: A CONNECT tunnel idle in both directions this long is closed.
    tunnel_idle_timeout: float = 300.0
    #: A client that stops reading this long loses the connection.
    send_timeout: float = 60.0
    max_header_bytes: int = 16 * 1024
    #: Pieces fetched at once when a whole blob is requested.
    prefetch_concurrency: int = 4
