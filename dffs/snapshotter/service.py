"""The gRPC servicer for containerd's ``containerd.services.snapshots.v1.Snapshots``.

Thin on purpose: it reads the namespace from the ``containerd-namespace``
metadata, asks :mod:`dffs.snapshotter.core` what a call may do and does the
filesystem work (directories, usage, removal); the rules' errors carry their
gRPC status (``grpc_code``), which the bridge applies.
Lazy layers are :class:`RemoteLayers`' business; without one (or when a
layer cannot be lazy) a layer's Prepare answers ordinary mounts and
containerd unpacks into them, so every image works.

Layout under ``root`` (``DATA_DIR/snapshotter``): ``metadata.db``,
``snapshots/<id>/fs`` and ``snapshots/<id>/work`` per snapshot, ``trash/``
for directories being removed.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import grpc
import trio
from google.protobuf import empty_pb2

from dffs.api import containerd_snapshots_pb2 as pb
from dffs.api import containerd_snapshots_pb2_grpc as pb_grpc
from dffs.api import containerd_types_pb2 as types_pb
from dffs.errors import primary_error
from dffs.rpc import bridge
from dffs.snapshotter import core
from dffs.snapshotter.mounts import Mount, active_mounts, view_mounts
from dffs.snapshotter.store import MetaStore, Row

log = logging.getLogger(__name__)

NAMESPACE_HEADER = "containerd-namespace"
_KINDS = {"view": pb.VIEW, "active": pb.ACTIVE, "committed": pb.COMMITTED}


class RemoteLayers(Protocol):
    """Where lazily served layers come from (dffs.snapshotter.lazy)."""

    def wants(self, labels: Mapping[str, str]) -> dict | None:
        """The remote description of the layer these Prepare labels name, or None (not lazy)."""

    async def mount(self, remote: dict) -> tuple[int, int]:
        """Make the layer's directory readable; returns its (bytes, inodes). Raises when it cannot."""

    def path(self, remote: dict) -> str:
        """The layer's directory (inside the one FUSE mount)."""

    async def release(self, remote: dict) -> None:
        """The last snapshot of this layer is gone."""


def disk_usage(path: Path) -> tuple[int, int]:
    """Bytes (allocated blocks) and inodes under ``path``, hard links counted once."""
    size = inodes = 0
    seen: set[tuple[int, int]] = set()
    for directory, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            inodes += 1
            size += st.st_blocks * 512
    return size, inodes


class SnapshotService(pb_grpc.SnapshotsServicer, bridge.TrioServicer):
    """One servicer for the Snapshots service; build it inside the trio run that serves it."""

    def __init__(self, root: Path, store: MetaStore, remote: RemoteLayers | None = None):
        bridge.TrioServicer.__init__(self)
        self.root = Path(root)
        self.snaps = core.Snapshots(store)
        self.remote = remote
        (self.root / "snapshots").mkdir(parents=True, exist_ok=True)
        (self.root / "trash").mkdir(exist_ok=True)

    # ------------------------------------------------------------ layout
    def _dir(self, row: Row) -> Path:
        return self.root / "snapshots" / str(row.id)

    def _layer_dir(self, row: Row) -> str:
        if row.remote is not None and self.remote is not None:
            return self.remote.path(row.remote)
        return str(self._dir(row) / "fs")

    def mounts(self, row: Row) -> list[Mount]:
        lowers = [self._layer_dir(r) for r in self.snaps.chain(row)]
        base = self._dir(row)
        if row.kind == "view":
            return view_mounts(str(base / "fs"), lowers)
        return active_mounts(str(base / "fs"), str(base / "work"), lowers)

    def _make_dirs(self, row: Row) -> None:
        base = self._dir(row)
        (base / "fs").mkdir(parents=True, exist_ok=True)
        if row.kind == "active":
            (base / "work").mkdir(exist_ok=True)

    def _trash(self, row: Row) -> None:
        base = self._dir(row)
        if base.exists():
            target = self.root / "trash" / f"{row.id}-{os.urandom(4).hex()}"
            os.rename(base, target)
            shutil.rmtree(target, ignore_errors=True)

    # --------------------------------------------------------- lifecycle
    async def restore(self) -> None:
        """At start: every snapshot's directories back, every lazy layer remounted, leftovers swept."""
        for row in self.snaps.store.all():
            if row.remote is not None:
                if self.remote is None:
                    log.warning("event=remote_layer_unavailable key=%s reason=no_lazy_layers", row.key)
                    continue
                try:
                    await self.remote.mount(row.remote)  # may give the layer its slot: saved below
                except Exception as exc:  # one bad layer must not stop the rest
                    log.error("event=remote_layer_restore_failed key=%s error=%s", row.key, exc)
                else:
                    self.snaps.store.save(row)
            elif row.kind != "committed":
                self._make_dirs(row)
        await trio.to_thread.run_sync(self._sweep)

    def _sweep(self) -> int:
        """Directories no snapshot owns (a crash between row and directory): removed."""
        known = {str(i) for i in self.snaps.store.ids()}
        removed = 0
        for entry in (self.root / "snapshots").iterdir():
            if entry.name not in known:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        for entry in (self.root / "trash").iterdir():
            shutil.rmtree(entry, ignore_errors=True)
        return removed

    # -------------------------------------------------------------- gRPC
    def register(self, server: grpc.Server) -> None:
        pb_grpc.add_SnapshotsServicer_to_server(self, server)

    @staticmethod
    def namespace(context: grpc.ServicerContext) -> str:
        for key, value in context.invocation_metadata() or ():
            if key == NAMESPACE_HEADER and value:
                return str(value)
        return "default"

    @staticmethod
    def _pb_mounts(mounts: list[Mount]) -> list[types_pb.Mount]:
        return [types_pb.Mount(type=m.type, source=m.source, options=list(m.options)) for m in mounts]

    @staticmethod
    def _pb_info(info: core.Info) -> pb.Info:
        message = pb.Info(name=info.name, parent=info.parent, kind=_KINDS[info.kind], labels=dict(info.labels))
        message.created_at.FromNanoseconds(int(info.created * 1e9))
        message.updated_at.FromNanoseconds(int(info.updated * 1e9))
        return message

    async def _io(self, what: str, fn, *args):
        """Filesystem work in a thread; an OSError is this call's INTERNAL error, logged."""
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except OSError as exc:
            log.error("event=snapshot_call_failed call=%s error=%s", what, exc)
            raise SnapshotIOError(f"{what}: {exc}") from None

    async def _try_remote(self, ns: str, request: Any) -> bool:
        """The skip-download flow: True when the layer is (now) committed remotely."""
        labels = dict(request.labels)
        target = labels.get(core.TARGET_LABEL)
        if not target or self.remote is None:
            return False
        if self.snaps.find_remote(ns, target, request.parent) is not None:
            return True
        remote = self.remote.wants(labels)
        if remote is None:
            return False
        try:
            usage = await self.remote.mount(remote)
        except Exception as exc:  # not lazy after all: containerd unpacks it as usual
            cause = primary_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
            log.warning("event=lazy_layer_unavailable target=%s action=unpack error=%s", target, cause)
            log.debug("lazy layer failure", exc_info=exc)
            return False
        try:
            self.snaps.commit_remote(ns, target, request.parent, labels, remote, usage)
        except core.AlreadyExists:
            pass  # a concurrent Prepare of the same layer won
        log.info("event=remote_snapshot_committed ns=%s target=%s parent=%s", ns, target, request.parent or "-")
        return True

    @bridge.unary_method
    async def Prepare(self, request: pb.PrepareSnapshotRequest, context: grpc.ServicerContext):
        ns = self.namespace(context)
        if await self._try_remote(ns, request):
            raise core.AlreadyExists(f"target snapshot {request.labels[core.TARGET_LABEL]!r} is mounted remotely")
        row = self.snaps.create(ns, request.key, request.parent, "active", dict(request.labels))
        await self._io("Prepare", self._make_dirs, row)
        return pb.PrepareSnapshotResponse(mounts=self._pb_mounts(self.mounts(row)))

    @bridge.unary_method
    async def View(self, request: pb.ViewSnapshotRequest, context: grpc.ServicerContext):
        row = self.snaps.create(self.namespace(context), request.key, request.parent, "view", dict(request.labels))
        await self._io("View", self._make_dirs, row)
        return pb.ViewSnapshotResponse(mounts=self._pb_mounts(self.mounts(row)))

    @bridge.unary_method
    async def Mounts(self, request: pb.MountsRequest, context: grpc.ServicerContext):
        row = self.snaps.for_mounts(self.namespace(context), request.key)
        return pb.MountsResponse(mounts=self._pb_mounts(self.mounts(row)))

    @bridge.unary_method
    async def Commit(self, request: pb.CommitSnapshotRequest, context: grpc.ServicerContext):
        ns = self.namespace(context)
        row = self.snaps.for_mounts(ns, request.key)
        usage = await self._io("Commit", disk_usage, self._dir(row) / "fs")
        row = self.snaps.commit(ns, request.name, request.key, dict(request.labels), usage)
        # The work directory is overlay's scratch space; a committed layer needs none.
        await trio.to_thread.run_sync(lambda: shutil.rmtree(self._dir(row) / "work", ignore_errors=True))
        return empty_pb2.Empty()

    @bridge.unary_method
    async def Remove(self, request: pb.RemoveSnapshotRequest, context: grpc.ServicerContext):
        row = self.snaps.remove(self.namespace(context), request.key)
        await self._io("Remove", self._trash, row)
        if row.remote is not None and self.remote is not None:
            if not any(r.remote == row.remote for r in self.snaps.store.all()):
                await self.remote.release(row.remote)
        return empty_pb2.Empty()

    @bridge.unary_method
    async def Stat(self, request: pb.StatSnapshotRequest, context: grpc.ServicerContext):
        return pb.StatSnapshotResponse(info=self._pb_info(self.snaps.stat(self.namespace(context), request.key)))

    @bridge.unary_method
    async def Update(self, request: pb.UpdateSnapshotRequest, context: grpc.ServicerContext):
        info = self.snaps.update(
            self.namespace(context), request.info.name, dict(request.info.labels), list(request.update_mask.paths)
        )
        return pb.UpdateSnapshotResponse(info=self._pb_info(info))

    @bridge.unary_method
    async def Usage(self, request: pb.UsageRequest, context: grpc.ServicerContext):
        row = self.snaps.usage_row(self.namespace(context), request.key)
        if row.kind == "committed" and row.size is not None:
            size, inodes = row.size, row.inodes or 0
        else:
            size, inodes = await self._io("Usage", disk_usage, self._dir(row) / "fs")
        return pb.UsageResponse(size=size, inodes=inodes)

    @bridge.unary_method
    async def Cleanup(self, request: pb.CleanupRequest, context: grpc.ServicerContext):
        removed = await self._io("Cleanup", self._sweep)
        log.info("event=snapshot_cleanup removed=%d", removed)
        return empty_pb2.Empty()

    @bridge.unary_stream_method
    async def List(self, request: pb.ListSnapshotsRequest, context: grpc.ServicerContext):
        infos = self.snaps.list(self.namespace(context), list(request.filters))
        for start in range(0, len(infos), 100):
            yield pb.ListSnapshotsResponse(info=[self._pb_info(i) for i in infos[start : start + 100]])


class SnapshotIOError(core.SnapshotError):
    """The filesystem failed under a call (disk full, permissions): INTERNAL, and logged."""

    grpc_code = "INTERNAL"


async def serve(
    service: SnapshotService,
    socket_path: Path,
    *,
    task_status: trio.TaskStatus[SnapshotService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the snapshots API on ``socket_path`` until cancelled (restore the service first)."""
    socket_path.unlink(missing_ok=True)
    async with bridge.open_grpc_server(f"unix:{socket_path}", service.register):
        os.chmod(socket_path, 0o600)  # containerd runs as root; nobody else may change snapshots
        log.info("event=snapshotter_ready socket=%s", socket_path)
        task_status.started(service)
        await trio.sleep_forever()
