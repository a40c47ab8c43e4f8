r"""The range fetcher a layer reads through, and the check every answer of it gets.

``fetch(offset, length) -> bytes`` is the caller's: in the daemon it reads the blob's
P2P task by range; in tests, a registry by HTTP Range.  An answer that is short is a
truncated blob, and a fetcher's own unexpected exception becomes a :class:`LayerError`
(its :class:`~dffs.errors.DffsError`\ s, timeouts included, pass through as they are).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from dffs.errors import DffsError
from dffs.layers.errors import LayerError, LayerFormatError

Fetch = Callable[[int, int], Awaitable[bytes]]


async def fetch_exact(fetch: Fetch, digest: str, offset: int, length: int) -> bytes:
    """``fetch`` with its answer checked: exactly ``length`` bytes, errors as LayerError."""
    try:
        data = await fetch(offset, length)
    except DffsError:
        raise
    except Exception as err:  # the fetcher's own failure, as one line that names the layer
        raise LayerError(f"layer {digest}: reading {length} bytes at {offset} failed: {err!r}") from err
    if len(data) != length:
        raise LayerFormatError(
            f"layer {digest}: blob truncated: {len(data)} of {length} bytes at offset {offset} came back"
        )
    return bytes(data)
