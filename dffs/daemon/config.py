"""The daemon's configuration (flags and TOML keys of the same names)."""

from __future__ import annotations

import socket
from pathlib import Path

import attrs

from dffs.config import DEFAULT_DATA_DIR
from dffs.idgen import host_id


@attrs.frozen
class DaemonConfig:
    data_dir: Path = DEFAULT_DATA_DIR
    #: The address this host is known by (and binds its servers to).
    ip: str = "127.0.0.1"
    hostname: str = attrs.field(factory=socket.gethostname)
    #: HTTP piece data plane.
    upload_port: int = 4000
    #: gRPC DfdaemonUpload (SyncPieces, seed triggers).
    rpc_port: int = 65000
    scheduler: str | None = None
    #: Manager (gRPC HOST:PORT) that hands out schedulers and the cluster's config;
    #: with it no static ``scheduler`` list is needed.
    manager: str | None = None
    #: Seconds between refreshes of the scheduler list and cluster config (and seed keepalives).
    manager_refresh_interval: float = 10.0
    #: Manager cluster a seed joins (0: the default cluster).
    cluster_id: int = 0
    seed: bool = False
    idc: str = ""
    location: str = ""
    announce_interval: float = 10.0
    max_concurrent_uploads: int = 16
    #: Upload bandwidth cap for all uploads together, bytes per second (0: none).
    upload_rate_limit: int = 0
    #: Download through P2P but never be offered as a parent (short-lived embedded peers).
    disable_shared: bool = False
    #: Seconds a piece may wait for any parent to have it before asking for new parents.
    parent_wait: float = 3.0
    #: Such waits before going to the origin anyway.
    parent_rounds: int = 3
    #: Attempts per origin request (the first included), with exponential backoff from 0.2 s to
    #: 5 s between them: about 11 s in all, so an origin that flaps for a few seconds is ridden
    #: out rather than failing the pieces that met it down (docs/reliability.md).
    origin_attempts: int = 7
    #: Budgets of those attempts one piece may use, a fresh one after each attempt that brought
    #: bytes (a flapping origin cuts a slow piece at every outage); bounds a dripping origin to
    #: attempts x budgets requests per piece.
    origin_progress_budgets: int = 16
    #: GC disk budget: bytes ("20GiB", "500MB", 1048576) or a share of the data dir's
    #: filesystem ("80%"); "" or 0: no quota (the task TTL still applies).
    storage_quota: str | int = ""
    #: GC watermarks, fractions of the quota: above ``gc_high_watermark`` pieces go,
    #: least recently used first, until usage is at ``gc_low_watermark``.
    gc_high_watermark: float = 0.8
    gc_low_watermark: float = 0.6
    #: Seconds between background GC passes.
    gc_interval: float = 60.0
    #: A task unused this long is evicted whole (seconds; 0: never).
    task_ttl: float = 7 * 24 * 3600.0
    #: An open task nobody holds, reads, fetches or pins is forgotten from memory after this long
    #: (seconds; 0: never); its pieces stay on disk, and the GC may then apply the TTL to it.
    task_idle_timeout: float = 600.0
    #: Seconds a task's local pieces count as current: after that an open asks the origin again (a
    #: conditional HEAD); while the origin is unreachable they are served as they are.
    revalidate_ttl: float = 60.0
    #: Prometheus metrics and /healthy on this port (0: any free port; -1: off).
    metrics_port: int = 4002
    #: HTTP proxy / registry mirror (dffs/proxy). None: 4001 if free (else no proxy, with a
    #: warning); an explicit port must bind; 0: any free port; -1: off.
    proxy_port: int | None = None
    #: The proxy's listen address: loopback unless clients in ``proxy_allow`` need it wider.
    proxy_listen: str = "127.0.0.1"
    #: Upstream registry of mirror mode, e.g. ``http://10.0.0.5:5000``.
    registry_mirror: str | None = None
    #: URL regexes that go through P2P (default: registry blobs); lists or comma-separated.
    proxy_rules: tuple[str, ...] | None = None
    #: Hosts (fnmatch patterns) that never go through P2P.
    proxy_bypass: tuple[str, ...] = ()
    #: Client networks (CIDR) allowed to use the proxy besides loopback.
    proxy_allow: tuple[str, ...] = ()
    proxy_max_connections: int = 512
    #: The cluster key file (``dffs cluster init``); default /etc/dffs/cluster.key when it exists,
    #: else DATA_DIR/cluster.key (made when everything is on loopback). See dffs/security/setup.py.
    cluster_key: str | None = None
    #: Plain text, members unauthenticated (a warning is logged).
    insecure: bool = False
    #: How piece bytes travel between members: "signed" (sendfile; each request signed, bytes checked
    #: against anchored digests, not encrypted) or "tls" (encrypted; bytes through user space). Every
    #: member of a cluster must use the same. See docs/security.md.
    data_plane: str = attrs.field(default="signed", validator=attrs.validators.in_(("signed", "tls")))
    #: Networks (CIDR) that requests from other members may make this host fetch from besides public
    #: addresses; loopback, link-local and cloud-metadata addresses are refused otherwise.
    remote_allow_networks: tuple[str, ...] = ()

    @property
    def host_id(self) -> str:
        return host_id(self.ip, self.hostname, self.seed)

    @property
    def schedulers(self) -> list[str]:
        return [s.strip() for s in (self.scheduler or "").split(",") if s.strip()]
