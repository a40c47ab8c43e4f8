"""The piece data plane a daemon runs: its upload server and piece client, built from its config.

A module of its own (and a light one: no gRPC, no FUSE) so that the daemon and
scripts/bench/pieces.py build exactly the same objects: what the benchmark
measures is what the daemon serves.
"""

from __future__ import annotations

from dffs.daemon.config import DaemonConfig
from dffs.security.transport import Transport
from dffs.storage import StorageManager
from dffs.upload import PieceUploadServer
from dffs.upload.client import PieceClient


def piece_data_plane(
    cfg: DaemonConfig, transport: Transport, storage: StorageManager
) -> tuple[PieceUploadServer, PieceClient]:
    """The upload server and piece client of a daemon with ``cfg``: requests signed with the cluster's
    piece key, TLS with member certificates (``data_plane = "tls"``), or neither (``--insecure``), as
    ``transport`` says."""
    server_tls, client_tls = transport.piece_tls() if cfg.data_plane == "tls" and transport.secure else (None, None)
    upload = PieceUploadServer(
        storage,
        host=cfg.ip,
        port=cfg.upload_port,
        max_concurrent_uploads=cfg.max_concurrent_uploads,
        rate_limit_bytes_per_sec=cfg.upload_rate_limit or None,
        auth=transport.piece_auth,
        tls=server_tls,
    )
    return upload, PieceClient(auth=transport.piece_auth, host_id=cfg.host_id, tls=client_tls)
