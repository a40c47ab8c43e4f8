"""Per-layer metrics of lazily served layers, in the daemon's registry (dffs.metrics)."""

from __future__ import annotations

import contextvars

from dffs.metrics import daemon as _metrics

#: Set in the prefetcher's tasks, so that blob reads there are booked as prefetched, not on demand.
PREFETCHING: contextvars.ContextVar[bool] = contextvars.ContextVar("dffs_prefetching", default=False)


class LayerMetrics:
    """One layer's series, bound once (``labels()`` on every read is not free)."""

    def __init__(self, digest: str):
        self._on_demand = _metrics.layer_on_demand_bytes.labels(digest)
        self._prefetched = _metrics.layer_prefetched_bytes.labels(digest)
        self._present = _metrics.layer_present_ratio.labels(digest)

    def on_demand(self, nbytes: int) -> None:
        if nbytes:
            self._on_demand.inc(nbytes)

    def prefetched(self, nbytes: int) -> None:
        if nbytes:
            self._prefetched.inc(nbytes)

    def present(self, present_bytes: int, total: int) -> None:
        self._present.set(present_bytes / total if total else 1.0)


_layers: dict[str, LayerMetrics] = {}


def layer(digest: str) -> LayerMetrics:
    found = _layers.get(digest)
    if found is None:
        found = _layers[digest] = LayerMetrics(digest)
    return found
