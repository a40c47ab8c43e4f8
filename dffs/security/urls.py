"""What another member may ask this host to fetch.

Requests that arrive over the network (a seed trigger or preheat through
``DfdaemonUpload.DownloadTask``, a register at the scheduler, a preheat job at
the manager) may only name the schemes the cluster shares, and never an
address inside this host or its cloud's control plane: otherwise anyone who
can reach a member turns it into a file reader or an SSRF proxy. Local
requests (the control socket, ``dffs get`` on the same host) are not limited.

:func:`check_scheme` is pure; :meth:`RemoteUrlPolicy.check` also resolves the
host name, and :meth:`RemoteUrlPolicy.check_address` is what the fetch checks
again for the address it actually connects to (so a DNS answer that changes in
between, or a redirect, does not get around it).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from dffs.errors import DffsError

#: Schemes every member can fetch for every other: what a remote request may name.
SHARED_SCHEMES = frozenset({"http", "https", "s3", "oci"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Addresses a remote request may not make this host connect to, unless allowed by config.
BLOCKED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",  # loopback
        "::1/128",
        "0.0.0.0/8",  # "this host"
        "::/128",
        "169.254.0.0/16",  # link-local, which holds AWS/GCP/Azure/OpenStack metadata (169.254.169.254)
        "fe80::/10",
        "fd00:ec2::254/128",  # AWS IMDS over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "::ffff:127.0.0.0/104",  # IPv4-mapped loopback and link-local
        "::ffff:169.254.0.0/112",
    )
)
#: Names of metadata services, refused before any lookup.
BLOCKED_NAMES = frozenset({"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"})


class Forbidden(DffsError):
    """A remote request named what it may not (a local file, an internal address)."""

    grpc_code = "PERMISSION_DENIED"


def check_scheme(url: str) -> None:
    """Only the schemes the cluster shares; ``file://`` and the like are for local callers."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SHARED_SCHEMES:
        shared = ", ".join(sorted(SHARED_SCHEMES))
        raise Forbidden(f"{scheme or 'no'} scheme in a request from another member: only {shared} are shared")


#: Loopback, allowed to the members of a one-host cluster (they all are this host).
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128", "::ffff:127.0.0.0/104")


class RemoteUrlPolicy:
    def __init__(self, allow_networks: Iterable[str] = (), *, allow_loopback: bool = False):
        """``allow_loopback``: this daemon listens on loopback only, so every member that can call it
        runs on this host; their requests may name its loopback origins (link-local and metadata
        addresses stay refused)."""
        networks = [*allow_networks, *(LOOPBACK_NETWORKS if allow_loopback else ())]
        #: Networks an operator allows despite BLOCKED_NETWORKS (a private origin on loopback, say).
        self.allow: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def check_address(self, address: str | IPAddress, *, what: str = "the origin") -> None:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if any(ip in net for net in self.allow):
            return
        if any(ip in net for net in BLOCKED_NETWORKS if net.version == ip.version):
            raise Forbidden(
                f"{what} resolves to {ip}, an address inside this host or its cloud's metadata service: refused "
                "for requests from other members (allow it with remote_allow_networks)"
            )

    def check(self, url: str) -> None:
        """Scheme, name and every address the host resolves to (blocking: call from a worker thread)."""
        check_scheme(url)
        parts = urlsplit(url)
        if parts.scheme.lower() in ("s3", "oci"):
            return  # the S3 endpoint and registries come from this host's own configuration
        host = (parts.hostname or "").rstrip(".").lower()
        if not host:
            raise Forbidden(f"{url!r} names no host")
        if host in BLOCKED_NAMES:
            raise Forbidden(f"{host} is a cloud metadata service: refused for requests from other members")
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise Forbidden(f"cannot resolve {host}: {exc}") from None
        for info in infos:
            self.check_address(str(info[4][0]).partition("%")[0], what=host)
