"""``dffs daemon --snapshotter``: the daemon, the layers' FUSE session and the snapshots API in one trio run.

The snapshotter is a user of the daemon: layer blobs are the daemon's P2P
tasks (its TaskManager), shared documents (gzip indexes, learned prefetch
lists) are published through the daemon's own control socket (``ImportTask``,
which also registers them with the scheduler). It starts after the daemon is
ready and stops before it: when the daemon's run ends (a signal), the
snapshots server, the prefetchers and the FUSE session are cancelled with it.

One FUSE session per process (pyfuse3): without ``--mount`` the layers get a
mount of their own at ``DATA_DIR/snapshotter/layers``; with ``--mount`` this
module serves the daemon's mount itself, the URL namespace and the layers in
one session, the layers under ``MOUNT/.layers``
(:class:`dffs.fs.multiplex.MultiplexOperations`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

import trio

from dffs.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
from dffs.errors import DffsError
from dffs.fs.layerops import LayerOperations
from dffs.fs.layertree import LayerTree
from dffs.fs.mount import build as build_namespace
from dffs.fs.mount import serve_layers
from dffs.fs.multiplex import LAYERS_NAME
from dffs.fs.prefetch import Prefetcher
from dffs.rpc import bridge
from dffs.snapshotter.config import SnapshotterConfig
from dffs.snapshotter.lazy import LazyLayers, Mounted, SharedDocuments
from dffs.snapshotter.prefetch import AccessRecorder, BackgroundPrefetch
from dffs.snapshotter.service import SnapshotService, serve
from dffs.snapshotter.store import MetaStore

log = logging.getLogger(__name__)


def socket_path(data_dir: Path) -> Path:
    return data_dir / "snapshotter.sock"


def _publisher(data_dir: Path):
    """Publish bytes as a complete task under a URL, through the daemon's control socket."""
    spool = data_dir / "snapshotter" / "shared"

    async def publish(url: str, data: bytes) -> None:
        spool.mkdir(parents=True, exist_ok=True)
        path = spool / hashlib.sha256(url.encode()).hexdigest()
        await trio.to_thread.run_sync(path.write_bytes, data)
        try:
            with bridge.insecure_channel(f"unix:{data_dir / 'dffs.sock'}") as channel:
                stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel)
                request = dfdaemon_pb2.ImportTaskRequest(path=str(path), download=common_pb2.Download(url=url))
                await bridge.unary(stub.ImportTask, request, timeout=30)
        except Exception as exc:  # grpc.RpcError and friends: the caller logs it
            raise DffsError(f"cannot publish {url}: {exc}") from None
        finally:
            path.unlink(missing_ok=True)

    return publish


async def run_daemon_with_snapshotter(daemon, cfg: SnapshotterConfig | None = None) -> None:
    cfg = cfg or SnapshotterConfig()
    data_dir = Path(daemon.cfg.data_dir)
    # With --mount, the one FUSE session (namespace and layers) is served here, not by the daemon.
    mount_cfg, daemon.mount = daemon.mount, None
    root = data_dir / "snapshotter"
    if mount_cfg is None:
        mountpoint = layers_dir = root / "layers"
    else:
        mountpoint = mount_cfg.mountpoint.absolute()
        layers_dir = mountpoint / LAYERS_NAME
    tree = LayerTree()
    layer_ops = LayerOperations(tree, read_timeout=cfg.read_timeout)
    root.mkdir(parents=True, exist_ok=True)
    store = MetaStore(root / "metadata.db")
    try:
        await _run(daemon, cfg, mount_cfg, root, mountpoint, layers_dir, tree, layer_ops, store)
    finally:
        store.close()


async def _run(daemon, cfg, mount_cfg, root, mountpoint, layers_dir, tree, layer_ops, store) -> None:
    data_dir = Path(daemon.cfg.data_dir)
    async with trio.open_nursery() as nursery:

        async def daemon_then_stop(task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                await daemon.run(task_status=task_status)
            finally:
                nursery.cancel_scope.cancel()

        await nursery.start(daemon_then_stop)
        shared = SharedDocuments(daemon.tasks, _publisher(data_dir))
        recorder = AccessRecorder(shared, nursery, record_window=cfg.record_window)
        prefetch = BackgroundPrefetch(shared, nursery, rate=cfg.prefetch_rate, delay=cfg.prefetch_delay)
        layer_ops.observers.append(recorder)

        def mounted(layer: Mounted) -> None:
            recorder.layer_mounted(layer)
            if cfg.prefetch:
                prefetch.layer_mounted(layer)

        lazy = LazyLayers(
            daemon.tasks,
            tree,
            layers_dir,
            shared,
            read_timeout=cfg.read_timeout,
            mount_timeout=cfg.mount_timeout,
            on_mounted=mounted,
        )
        service = SnapshotService(root, store, lazy)
        # Every layer back in the tree before the kernel can ask about it (after a
        # restart, running containers' requests are waiting at the keeper).
        await service.restore()
        namespace = None
        if mount_cfg is not None:
            namespace, _, _ = build_namespace(mount_cfg, daemon.tasks)
            namespace.attach(Prefetcher(nursery, concurrency=mount_cfg.prefetch_concurrency))
        await nursery.start(
            functools.partial(
                serve_layers,
                mountpoint,
                layer_ops,
                keeper_socket=root / "fuse.sock",
                keeper_log=root / "fuse-keeper.log",
                namespace=namespace,
            )
        )
        await nursery.start(serve, service, socket_path(data_dir))
        print(f"dffs snapshotter ready socket={socket_path(data_dir)}", flush=True)
