"""Which URLs go through P2P, which hosts are bypassed, which clients may use the proxy.

Pure: no sockets, no trio. Built once from the configuration (bad regexes and
CIDRs are usage errors with one-line messages), then asked per request.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

import attrs

from dffs.errors import UsageError
from dffs.idgen import normalize_url

_LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
_LOOPBACK_V6 = ipaddress.ip_network("::1/128")


@attrs.frozen
class ProxyRules:
    p2p: tuple[re.Pattern[str], ...] = ()
    bypass: tuple[str, ...] = ()
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def build(cls, rules: Iterable[str] = (), bypass: Iterable[str] = (), allow: Iterable[str] = ()) -> ProxyRules:
        patterns: list[re.Pattern[str]] = []
        for rule in rules:
            try:
                patterns.append(re.compile(rule))
            except re.error as exc:
                raise UsageError(f"bad proxy rule {rule!r}: {exc}") from None
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for cidr in allow:
            try:
                networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
            except ValueError as exc:
                raise UsageError(f"bad proxy allow entry {cidr!r}: {exc}") from None
        hosts = tuple(h.strip().lower() for h in bypass if h.strip())
        return cls(tuple(patterns), hosts, tuple(networks))

    def bypassed(self, host: str) -> bool:
        """Whether ``host`` (a name or address, maybe with ``:port``) must never go through P2P."""
        host = host.lower()
        bare = _strip_port(host)
        return any(fnmatch.fnmatchcase(host, p) or fnmatch.fnmatchcase(bare, p) for p in self.bypass)

    def via_p2p(self, method: str, url: str) -> bool:
        """Whether a request goes through P2P: a GET or HEAD whose URL (without volatile
        query parameters) matches a rule, on a host that is not bypassed."""
        if method not in ("GET", "HEAD"):
            return False
        try:
            host = urlsplit(url).netloc
        except ValueError:
            return False
        if self.bypassed(host):
            return False
        normalized = normalize_url(url)
        return any(p.search(normalized) for p in self.p2p)

    def client_allowed(self, address: str) -> bool:
        """Loopback always; anything else only inside an ``allow`` network."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip in _LOOPBACK_V4 or ip in _LOOPBACK_V6:
            return True
        return any(ip.version == net.version and ip in net for net in self.allow)


def is_loopback_address(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host
