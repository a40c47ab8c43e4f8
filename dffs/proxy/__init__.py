"""The daemon's HTTP proxy and registry mirror (issue 6).

``rules`` (which URLs go through P2P, bypass list, client allow-list),
``protocol`` (Range and header rules) and ``mirror`` (what to do with one
request head) are pure and tested without sockets; ``upstream`` (relay to the
origin) and ``server`` (the trio server in the daemon's nursery) do the I/O.
"""

from dffs.proxy.config import DEFAULT_PROXY_PORT, ProxyConfig
from dffs.proxy.server import ProxyServer

__all__ = ["DEFAULT_PROXY_PORT", "ProxyConfig", "ProxyServer"]
