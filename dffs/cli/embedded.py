"""The embedded peer of one ``dffs get`` (single file or ``--recursive``): a daemon for that
command alone, in its own module so both commands use it without importing each other."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dffs.config import GetConfig

if TYPE_CHECKING:
    from dffs.daemon.server import Daemon


def embedded_peer(cfg: GetConfig) -> Daemon:
    """A daemon for this command alone: it takes pieces from the swarm and is never offered as a
    parent (it is about to leave)."""
    from dffs.daemon.config import DaemonConfig
    from dffs.daemon.server import Daemon

    return Daemon(
        DaemonConfig(
            data_dir=cfg.data_dir,
            scheduler=cfg.scheduler,
            manager=cfg.manager,
            upload_port=0,
            rpc_port=0,
            disable_shared=True,
            cluster_key=cfg.cluster_key,
            insecure=cfg.insecure,
        ),
        embedded=True,
    )
