"""Lazily served layers: a layer blob's P2P task read by range through ``dffs.layers``.

A layer the snapshotter is asked to mount becomes a directory of the one FUSE
mount (``LAYERS_DIR/<digest hex>``): its file tree comes from the layer's
index (the eStargz TOC, or the gzip index with the tar's file table) and
every file read becomes reads of byte ranges of the blob, which wait on the
blob task's pieces (``PeerTask.ensure_piece``: single flight, from peers
first, piece digests checked) and ``pread`` the content file.

The gzip index costs one pass over the whole blob, so it is built once in the
cluster and shared as a P2P task of its own keyed by the blob digest
(:class:`SharedDocuments`): the first host that mounts a gzip layer builds it
while the blob streams through, every later host fetches the index (a few
hundred KiB) and starts lazily. Layers no lazy reader takes (zstd; a blob
that is not what its labels say) are refused in :meth:`LazyLayers.wants` or
:meth:`LazyLayers.mount`, and the snapshotter has containerd unpack them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from dffs.errors import DffsError, SourceError, primary_error
from dffs.fs.layertree import LayerTree
from dffs.idgen import pieces_for_range
from dffs.peertask import DownloadRequest, PeerTask, TaskManager
from dffs.snapshotter import metrics
from dffs.snapshotter.labels import LayerSource, layer_source

log = logging.getLogger(__name__)

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR = "application/vnd.oci.image.layer.v1.tar"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class NotLazy(DffsError):
    """This layer cannot be served lazily (the snapshotter has it unpacked instead)."""


def _reader_module():
    """``dffs.layers`` (the layer formats), or None while it is not installed."""
    try:
        import dffs.layers as layers
    except ImportError:
        return None
    return layers


def _entries(index: Any) -> list[Any]:
    """A ``dffs.layers.LayerIndex``'s entries (the root, path "", included)."""
    return list(index.entries)


class BlobReader:
    """Byte ranges of a layer blob from its P2P task: what ``dffs.layers`` calls ``fetch``."""

    def __init__(self, task: PeerTask, digest: str, *, timeout: float):
        self.task = task
        self.digest = digest
        self.timeout = timeout
        self.stats = metrics.layer(digest)

    @property
    def size(self) -> int:
        return self.task.store.meta.content_length

    async def fetch(self, offset: int, length: int) -> bytes:
        store = self.task.store
        meta = store.meta
        if offset < 0 or length < 0 or offset + length > meta.content_length:
            raise SourceError(
                f"layer {self.digest}: range {offset}+{length} is outside the blob ({meta.content_length} bytes)"
            )
        if length == 0:
            return b""
        needed = pieces_for_range(offset, length, meta.content_length, meta.piece_length)
        with store.pinned(needed):
            missing = [n for n in needed if not store.has_piece(n)]
            with trio.fail_after(self.timeout):
                if len(needed) == 1:
                    await self.task.ensure_piece(needed[0])
                else:
                    try:
                        async with trio.open_nursery() as nursery:
                            for number in needed:
                                nursery.start_soon(self.task.ensure_piece, number)
                    except BaseExceptionGroup as group:
                        raise primary_error(group) from None
            fetched = sum(store.span(n).length for n in missing)
            if metrics.PREFETCHING.get():
                self.stats.prefetched(fetched)
            else:
                self.stats.on_demand(fetched)
            fd, base = store.content_location()
            data = await trio.to_thread.run_sync(os.pread, fd, length, base + offset)
        self.stats.present(store.present_bytes(), meta.content_length)
        if len(data) != length:
            raise SourceError(f"layer {self.digest}: short read of the blob at {offset}")
        return data


class SharedDocuments:
    """Small documents (gzip indexes, learned prefetch lists) shared through the swarm by key.

    Each is a P2P task of its own whose URL names only the document kind and
    key (``file:///dffs-shared/KIND/KEY``): no origin holds it, so a host that
    wants it gets its size from the scheduler and its bytes from a peer that
    published it (``dffs ctl import``'s path), and the registry sees nothing.
    """

    def __init__(
        self,
        tasks: TaskManager,
        publish: Callable[[str, bytes], Awaitable[None]] | None,
        *,
        timeout: float = 30.0,
        max_bytes: int = 256 << 20,
    ):
        self.tasks = tasks
        self.publish_fn = publish
        self.timeout = timeout
        self.max_bytes = max_bytes

    @staticmethod
    def url(kind: str, key: str) -> str:
        return f"file:///dffs-shared/{kind}/{key.replace(':', '-')}"

    async def get(self, kind: str, key: str) -> bytes | None:
        url = self.url(kind, key)
        try:
            with trio.fail_after(self.timeout):
                task = await self.tasks.open(DownloadRequest(url=url))
                if task.store.meta.content_length > self.max_bytes:
                    log.warning("event=shared_document_too_large kind=%s key=%s", kind, key)
                    return None
                await task.fetch_all(concurrency=4)
                fd, base = task.store.content_location()
                return await trio.to_thread.run_sync(os.pread, fd, task.store.meta.content_length, base)
        except (DffsError, OSError, trio.TooSlowError) as exc:
            log.info("event=shared_document_unavailable kind=%s key=%s error=%s", kind, key, exc)
            return None

    async def put(self, kind: str, key: str, data: bytes) -> None:
        if self.publish_fn is None:
            return
        try:
            with trio.fail_after(self.timeout):
                await self.publish_fn(self.url(kind, key), data)
            log.info("event=shared_document_published kind=%s key=%s bytes=%d", kind, key, len(data))
        except (DffsError, OSError, trio.TooSlowError) as exc:
            log.warning("event=shared_document_publish_failed kind=%s key=%s error=%s", kind, key, exc)


@attrs.define
class Mounted:
    source: LayerSource
    reader: BlobReader
    layer: Any
    usage: tuple[int, int]
    #: The layer's inode slot in the tree (stored with the snapshot: stable across restarts).
    slot: int = 0


class LazyLayers:
    """The snapshotter's RemoteLayers: layer directories in the FUSE mount, bytes from P2P."""

    def __init__(
        self,
        tasks: TaskManager,
        tree: LayerTree,
        layers_dir: Path,
        shared: SharedDocuments,
        *,
        read_timeout: float = 30.0,
        mount_timeout: float = 600.0,
        on_mounted: Callable[[Mounted], None] | None = None,
    ):
        self.tasks = tasks
        self.tree = tree
        self.layers_dir = Path(layers_dir)
        self.shared = shared
        self.read_timeout = read_timeout
        self.mount_timeout = mount_timeout
        self.on_mounted = on_mounted
        self.mounted: dict[str, Mounted] = {}
        self._locks: dict[str, trio.Lock] = {}

    @staticmethod
    def name(remote: dict) -> str:
        return str(remote["digest"]).removeprefix("sha256:")

    def path(self, remote: dict) -> str:
        return str(self.layers_dir / self.name(remote))

    def wants(self, labels) -> dict | None:
        source = layer_source(labels)
        if source is None or "zstd" in source.media_type or _reader_module() is None:
            return None
        return source.to_json()

    async def mount(self, remote: dict) -> tuple[int, int]:
        source = LayerSource.from_json(remote)
        name = self.name(remote)
        async with self._locks.setdefault(name, trio.Lock()):
            if name in self.mounted:
                remote["slot"] = self.mounted[name].slot
                return self.mounted[name].usage
            try:
                with trio.fail_after(self.mount_timeout):
                    mounted = await self._open(source)
            except trio.TooSlowError:
                raise NotLazy(f"layer {source.digest}: not mounted within {self.mount_timeout:g}s") from None
            slot = int(remote.get("slot") or 0)
            if not slot or self.tree.slot_taken(slot):
                slot = self.tree.free_slot()
            try:
                self.tree.add_layer(name, _entries(mounted.layer.index), mounted.layer, source.digest, slot)
            except ValueError as exc:
                raise NotLazy(f"layer {source.digest}: {exc}") from None
            remote["slot"] = mounted.slot = slot  # saved with the snapshot by the caller
            self.mounted[name] = mounted
        log.info(
            "layer=%s event=layer_mounted path=%s files=%d bytes=%d blob_present=%d/%d",
            source.digest,
            self.path(remote),
            mounted.usage[1],
            mounted.usage[0],
            mounted.reader.task.store.present_bytes(),
            mounted.reader.size,
        )
        if self.on_mounted is not None:
            self.on_mounted(mounted)
        return mounted.usage

    async def _open_task(self, source: LayerSource) -> PeerTask:
        if "{scheme}" not in source.url:
            return await self.tasks.open(DownloadRequest(url=source.url))
        error: Exception | None = None
        for scheme in ("https", "http"):
            try:
                return await self.tasks.open(DownloadRequest(url=source.url.replace("{scheme}", scheme)))
            except (DffsError, OSError) as exc:
                error = exc
        raise SourceError(f"layer {source.digest}: {error}")

    async def _open(self, source: LayerSource) -> Mounted:
        layers = _reader_module()
        if layers is None:
            raise NotLazy("the layer formats (dffs.layers) are not installed")
        task = await self._open_task(source)
        reader = BlobReader(task, source.digest, timeout=self.read_timeout)
        if source.size is not None and source.size != reader.size:
            raise NotLazy(f"layer {source.digest}: the blob is {reader.size} bytes, its labels say {source.size}")
        media_type = source.media_type or await self._sniff(reader)
        annotations = {"containerd.io/snapshot/stargz/toc.digest": source.toc_digest} if source.toc_digest else {}
        try:
            fmt = layers.layer_format(media_type, annotations)
            index_bytes = None
            if fmt is layers.Format.GZIP:
                index_bytes = await self.shared.get("gzip-index", source.digest)
            try:
                layer = await layers.open_layer(
                    media_type, annotations, reader.fetch, reader.size, index_bytes, digest=source.digest
                )
            except layers.IndexRequired:
                index_bytes = await self._build_index(layers, media_type, reader)
                layer = await layers.open_layer(
                    media_type, annotations, reader.fetch, reader.size, index_bytes, digest=source.digest
                )
                await self.shared.put("gzip-index", source.digest, index_bytes)
        except layers.LayerError as exc:
            raise NotLazy(f"layer {source.digest}: {exc}") from None
        entries = _entries(layer.index)
        size = sum(int(getattr(e, "size", 0) or 0) for e in entries if str(getattr(e, "kind", "")) == "reg")
        return Mounted(source, reader, layer, (size, len(entries)))

    async def _build_index(self, layers: Any, media_type: str, reader: BlobReader) -> bytes:
        """The first host to mount a gzip layer indexes it while the whole blob streams through.

        Not silent: it is logged, and it is what makes every later host lazy."""
        store = reader.task.store
        log.info("layer=%s event=layer_index_build bytes=%d reason=no_shared_index", reader.digest, reader.size)

        async def chunks():
            for number in range(store.meta.piece_count):
                span = store.span(number)
                yield await reader.fetch(span.offset, span.length)

        try:
            async with trio.open_nursery() as nursery:
                # whole-blob workers keep pieces in flight while the index reads them in order
                nursery.start_soon(reader.task.fetch_all)
                index_bytes = await layers.build_index(media_type, chunks(), digest=reader.digest)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise primary_error(group) from None
        log.info("layer=%s event=layer_index_built index_bytes=%d", reader.digest, len(index_bytes))
        return bytes(index_bytes)

    async def _sniff(self, reader: BlobReader) -> str:
        head = await reader.fetch(0, min(4, reader.size))
        if head.startswith(_ZSTD_MAGIC):
            return "application/vnd.oci.image.layer.v1.tar+zstd"
        return GZIP if head.startswith(_GZIP_MAGIC) else TAR

    async def release(self, remote: dict) -> None:
        name = self.name(remote)
        self.mounted.pop(name, None)
        if self.tree.remove_layer(name):
            log.info("layer=%s event=layer_released", remote.get("digest"))
