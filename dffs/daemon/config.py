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

    @property
    def host_id(self) -> str:
        return host_id(self.ip, self.hostname, self.seed)

    @property
    def schedulers(self) -> list[str]:
        return [s.strip() for s in (self.scheduler or "").split(",") if s.strip()]
