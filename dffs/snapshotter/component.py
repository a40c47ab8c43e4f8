"""The snapshotter as a component of ``dffs daemon --snapshotter``: built by the daemon, run in its nursery.

:class:`Snapshotter` gets what it uses at construction — the daemon's
TaskManager (layer blobs are its P2P tasks), its LocalTasks (shared documents:
gzip indexes and learned prefetch lists are imported as complete tasks and
announced to the scheduler) and the mount's config when the daemon also has
``--mount`` — and :meth:`Snapshotter.run` serves, in this order, until
cancelled: every snapshot restored (lazy layers back in the tree before the
kernel can ask about them), the FUSE session, then the snapshots API on
``DATA_DIR/snapshotter.sock``.

One FUSE session per process (pyfuse3): without ``--mount`` the layers are a
mount of their own at ``DATA_DIR/snapshotter/layers``; with ``--mount`` the
URL namespace and the layers share the session, the layers under
``MOUNT/.layers`` (:class:`dffs.fs.multiplex.MultiplexOperations`). Either way
the mount is held by the FUSE keeper (:mod:`dffs.fs.keeper`), so it outlives
a restart of this process and running containers keep their layers.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

import trio

from dffs.fs.layerops import LayerOperations
from dffs.fs.layertree import LayerTree
from dffs.fs.mount import MountConfig, serve_layers
from dffs.fs.mount import build as build_namespace
from dffs.fs.multiplex import LAYERS_NAME
from dffs.peertask import DownloadRequest, TaskManager
from dffs.snapshotter.config import SnapshotterConfig
from dffs.snapshotter.lazy import LazyLayers, Mounted, SharedDocuments
from dffs.snapshotter.prefetch import AccessRecorder, BackgroundPrefetch
from dffs.snapshotter.service import SnapshotService, serve
from dffs.snapshotter.store import MetaStore

log = logging.getLogger(__name__)


def socket_path(data_dir: Path) -> Path:
    return Path(data_dir) / "snapshotter.sock"


class Snapshotter:
    def __init__(
        self,
        data_dir: Path,
        cfg: SnapshotterConfig,
        *,
        tasks: TaskManager,
        local,
        mount: MountConfig | None = None,
    ):
        self.cfg = cfg
        self.local = local
        self.root = Path(data_dir) / "snapshotter"
        self.socket = socket_path(data_dir)
        if mount is None:
            self.mountpoint = self.layers_dir = self.root / "layers"
        else:
            self.mountpoint = mount.mountpoint.absolute()
            self.layers_dir = self.mountpoint / LAYERS_NAME
        #: The URL namespace's operations when the daemon also mounts it (built now: bad input fails early).
        self.namespace = build_namespace(mount, tasks) if mount is not None else None
        self.tree = LayerTree()
        self.layer_ops = LayerOperations(self.tree, read_timeout=cfg.read_timeout)
        self.shared = SharedDocuments(tasks, self._publish)
        self.lazy = LazyLayers(
            tasks,
            self.tree,
            self.layers_dir,
            self.shared,
            read_timeout=cfg.read_timeout,
            mount_timeout=cfg.mount_timeout,
            on_mounted=self._mounted,
        )
        self._recorder: AccessRecorder | None = None
        self._prefetch: BackgroundPrefetch | None = None

    async def _publish(self, url: str, data: bytes) -> None:
        """Bytes as a complete task under ``url``, announced to its scheduler (shared documents)."""
        spool = self.root / "shared"
        spool.mkdir(parents=True, exist_ok=True)
        path = spool / hashlib.sha256(url.encode()).hexdigest()
        await trio.to_thread.run_sync(path.write_bytes, data)
        try:
            await self.local.import_file(path, DownloadRequest(url=url))
        finally:
            path.unlink(missing_ok=True)

    def _mounted(self, layer: Mounted) -> None:
        if self._recorder is not None:
            self._recorder.layer_mounted(layer)
        if self._prefetch is not None and self.cfg.prefetch:
            self._prefetch.layer_mounted(layer)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        store = MetaStore(self.root / "metadata.db")
        try:
            async with trio.open_nursery() as nursery:
                self._recorder = AccessRecorder(self.shared, nursery, record_window=self.cfg.record_window)
                self._prefetch = BackgroundPrefetch(
                    self.shared, rate=self.cfg.prefetch_rate, delay=self.cfg.prefetch_delay
                )
                self.layer_ops.observers.append(self._recorder)
                service = SnapshotService(self.root, store, self.lazy)
                # Every layer back in the tree before the kernel can ask about it (after a
                # restart, running containers' requests are waiting at the keeper).
                await service.restore()
                await nursery.start(
                    functools.partial(
                        serve_layers,
                        self.mountpoint,
                        self.layer_ops,
                        keeper_socket=self.root / "fuse.sock",
                        keeper_log=self.root / "fuse-keeper.log",
                        namespace=self.namespace,
                    )
                )
                await nursery.start(serve, service, self.socket)
                print(f"dffs snapshotter ready socket={self.socket}", flush=True)
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                store.close()
