"""Prefetch that learns: the rest of a mounted layer in the background, what containers read first before that.

* **Learned lists.** For the first ``record_window`` seconds after an image's
  first layer read, :class:`AccessRecorder` notes which files of its layers
  containers read, and publishes the list as a shared document keyed by the
  image's manifest digest (a small P2P task, see ``SharedDocuments``). A host
  that mounts a layer of that image later fetches those files first, before
  any container asks for them.
* **The rest.** Then every missing piece of the blob, one at a time and under
  ``rate`` bytes per second, so on-demand reads (which go straight to
  ``ensure_piece``) keep the bandwidth they need.

The recorder's timers run in the snapshotter's nursery; each layer's prefetch
belongs to its blob task's background work and ends with the task.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import trio

from dffs.errors import DffsError
from dffs.fs.layertree import LayerNode
from dffs.snapshotter.lazy import Mounted, SharedDocuments, _entries
from dffs.snapshotter.metrics import PREFETCHING

log = logging.getLogger(__name__)

KIND = "prefetch-list"


def parse_list(data: bytes) -> dict[str, list[str]]:
    """A published list: {layer digest: [paths]}; anything malformed is an empty list."""
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, dict):
        return {}
    return {
        str(digest): [str(p) for p in paths if isinstance(p, str)][:10000]
        for digest, paths in layers.items()
        if isinstance(paths, list)
    }


class AccessRecorder:
    """Which files each image's containers read in their first seconds (the FUSE read observer)."""

    def __init__(self, shared: SharedDocuments, nursery: trio.Nursery, *, record_window: float = 10.0):
        self.shared = shared
        self.nursery = nursery
        self.record_window = record_window
        #: layer digest -> manifest digest (learned at mount)
        self.image_of: dict[str, str] = {}
        self._recording: dict[str, dict[str, list[str]]] = {}
        self._started: dict[str, float] = {}
        self._done: set[str] = set()

    def layer_mounted(self, mounted: Mounted) -> None:
        if mounted.source.manifest_digest:
            self.image_of.setdefault(mounted.source.digest, mounted.source.manifest_digest)

    def __call__(self, node: LayerNode, offset: int, size: int) -> None:
        manifest = self.image_of.get(node.digest)
        if manifest is None or manifest in self._done or PREFETCHING.get():
            return
        if manifest not in self._started:
            self._started[manifest] = time.monotonic()
            self._recording[manifest] = {}
            self.nursery.start_soon(self._publish_later, manifest)
        if time.monotonic() - self._started[manifest] > self.record_window:
            return
        paths = self._recording[manifest].setdefault(node.digest, [])
        path = str(getattr(node.entry, "path", node.name))
        if path not in paths:
            paths.append(path)

    async def _publish_later(self, manifest: str) -> None:
        await trio.sleep(self.record_window)
        self._done.add(manifest)
        layers = self._recording.pop(manifest, {})
        if layers:
            await self.shared.put(KIND, manifest, json.dumps({"version": 1, "layers": layers}).encode())


class BackgroundPrefetch:
    """One prefetch per mounted layer, owned by the layer blob task's background (cancelled with the task)."""

    def __init__(self, shared: SharedDocuments, *, rate: float = 20e6, delay: float = 2.0):
        self.shared = shared
        self.rate = rate
        self.delay = delay

    def layer_mounted(self, mounted: Mounted) -> None:
        mounted.reader.task.background.start_soon(self._run, mounted)

    async def _run(self, mounted: Mounted) -> None:
        PREFETCHING.set(True)
        digest = mounted.source.digest
        try:
            if mounted.source.manifest_digest:
                await self._learned(mounted)
            await trio.sleep(self.delay)
            await self._rest(mounted)
        except (DffsError, OSError, trio.TooSlowError) as exc:  # background work: logged, never fatal
            log.warning("layer=%s event=prefetch_stopped error=%s", digest, exc)

    async def _learned(self, mounted: Mounted) -> None:
        data = await self.shared.get(KIND, mounted.source.manifest_digest)
        if not data:
            return
        paths = parse_list(data).get(mounted.source.digest, [])
        if not paths:
            return
        by_path: dict[str, Any] = {str(e.path).lstrip("./"): e for e in _entries(mounted.layer.index)}
        started = time.monotonic()
        done = 0
        for path in paths:
            entry = by_path.get(path.lstrip("./"))
            if entry is None or str(entry.kind) != "reg":
                continue
            size = int(entry.size)
            for offset in range(0, size, 1 << 20):
                await mounted.layer.read(entry, offset, min(1 << 20, size - offset))
            done += 1
        log.info(
            "layer=%s event=learned_prefetch_done files=%d ms=%.0f",
            mounted.source.digest,
            done,
            1000 * (time.monotonic() - started),
        )

    async def _rest(self, mounted: Mounted) -> None:
        task = mounted.reader.task
        store = task.store
        stats = mounted.reader.stats
        for number in store.missing_pieces():
            if store.has_piece(number):
                continue
            started = time.monotonic()
            await task.ensure_piece(number)
            length = store.span(number).length
            stats.prefetched(length)
            stats.present(store.present_bytes(), store.meta.content_length)
            pause = length / self.rate - (time.monotonic() - started)
            if pause > 0:
                await trio.sleep(pause)
        log.info("layer=%s event=prefetch_complete bytes=%d", mounted.source.digest, store.meta.content_length)
