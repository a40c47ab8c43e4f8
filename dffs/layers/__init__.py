"""Lazy readers for container image layers (no FUSE, no gRPC, no containerd in here).

For the snapshotter: open a layer from its descriptor and a range fetcher over its
blob, then list its tree and read its files::

    from dffs.layers import open_layer, build_index, Kind

    async def fetch(offset: int, length: int) -> bytes:  # e.g. the blob's P2P task, by range
        ...

    layer = await open_layer(desc.media_type, desc.annotations, fetch, desc.size,
                             index_bytes=shared_index_or_None, digest=desc.digest)
    for entry in layer.index.children(""):          # Entry: path, kind, mode, uid, gid, size, mtime,
        ...                                         #   link_target, devmajor, devminor, xattrs
    target = layer.index.resolve(entry)             # a hard link's file; nlink: layer.index.nlink(entry)
    data = await layer.read(entry, offset, 128 << 10)

- eStargz (``containerd.io/snapshot/stargz/toc.digest`` annotation, or the footer):
  the TOC from the blob; each chunk's digest checked on every read.
- unmodified gzip: needs ``index_bytes`` — built once, in one pass over the streamed
  blob, by ``await build_index(media_type, chunks, digest=...)`` (the seed does it) and
  shared as a task of its own keyed by the blob digest; without it, ``IndexRequired``.
- uncompressed tar: the index comes from the tar headers (fetched by range) or
  ``index_bytes``; reads are direct ranges.
- zstd (and anything else): ``NotLazy`` — unpack those layers normally.

Whiteouts are presented as overlayfs wants them (``.wh.NAME`` → char device 0/0 named
NAME, ``.wh..wh..opq`` → ``trusted.overlay.opaque=y`` on the directory).  Every error
is a :class:`LayerError` (a ``DffsError``) with a one-line message: ``LayerFormatError``
(bad or truncated blob, index or TOC), ``LayerDigestError``, ``NotLazy``, ``IndexRequired``.
Reads of a lazily checked layer are only as good as its chunk digests (eStargz) or
the daemon's piece digests (gzip, tar): nothing checks a whole blob's sha256 before
it is complete — ``build_index`` does, as it streams it.
"""

from dffs.layers.errors import IndexRequired, LayerDigestError, LayerError, LayerFormatError, NotLazy
from dffs.layers.reader import Layer, build_index, layer_format, open_layer
from dffs.layers.tree import Entry, Format, Kind, LayerIndex

__all__ = [
    "Entry",
    "Format",
    "IndexRequired",
    "Kind",
    "Layer",
    "LayerDigestError",
    "LayerError",
    "LayerFormatError",
    "LayerIndex",
    "NotLazy",
    "build_index",
    "layer_format",
    "open_layer",
]
