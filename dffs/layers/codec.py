"""Layer indexes to bytes and back, for sharing through the cluster.

Layout: ``b"DFLI"``, one version byte, then the ``dffs.layers.LayerIndex`` protobuf
message (protos/dffs/api/layers.proto) compressed with zlib.  Compact because
entries are sorted by path (zlib folds the shared prefixes) and checkpoint windows
are text-like data.  Decoding trusts nothing: the inflated size is bounded, the
message must parse, and the result goes through the same validation as a fresh scan
(:class:`~dffs.layers.tree.LayerIndex`, :func:`~dffs.layers.gzindex.validate_checkpoints`),
so a bad index from a peer is a :class:`LayerFormatError`, never a crash or a lie
that survives to a read.
"""

from __future__ import annotations

import os
import zlib

from google.protobuf.message import DecodeError

from dffs.api import layers_pb2
from dffs.layers.errors import LayerFormatError
from dffs.layers.gzindex import Checkpoint, GzipIndex
from dffs.layers.tree import Chunk, Entry, Format, Kind, LayerIndex

MAGIC = b"DFLI"
VERSION = 1
#: Largest inflated index accepted (a 100 GiB gzip layer's windows are ~800 MiB).
MAX_DECODED = 1 << 30

_FORMATS = {
    Format.TAR: layers_pb2.LAYER_FORMAT_TAR,
    Format.GZIP: layers_pb2.LAYER_FORMAT_GZIP,
    Format.ESTARGZ: layers_pb2.LAYER_FORMAT_ESTARGZ,
}
_KINDS = {
    Kind.REG: layers_pb2.ENTRY_KIND_REG,
    Kind.DIR: layers_pb2.ENTRY_KIND_DIR,
    Kind.SYMLINK: layers_pb2.ENTRY_KIND_SYMLINK,
    Kind.HARDLINK: layers_pb2.ENTRY_KIND_HARDLINK,
    Kind.CHAR: layers_pb2.ENTRY_KIND_CHAR,
    Kind.BLOCK: layers_pb2.ENTRY_KIND_BLOCK,
    Kind.FIFO: layers_pb2.ENTRY_KIND_FIFO,
}
_FORMATS_BACK = {v: k for k, v in _FORMATS.items()}
_KINDS_BACK = {v: k for k, v in _KINDS.items()}


def dumps(index: LayerIndex | GzipIndex) -> bytes:
    """The wire form of a layer index (a gzip index with its checkpoints)."""
    tree = index.tree if isinstance(index, GzipIndex) else index
    message = layers_pb2.LayerIndex(
        blob_digest=tree.blob_digest,
        blob_size=tree.blob_size,
        format=_FORMATS[tree.format],
        tar_size=tree.tar_size,
    )
    for entry in tree.entries:
        out = message.entries.add(
            path=os.fsencode(entry.path),
            kind=_KINDS[entry.kind],
            mode=entry.mode,
            uid=entry.uid,
            gid=entry.gid,
            size=entry.size,
            mtime=entry.mtime,
            link_target=os.fsencode(entry.link_target),
            devmajor=entry.devmajor,
            devminor=entry.devminor,
            offset=entry.offset,
            implied=entry.implied,
        )
        for name, value in entry.xattrs:
            out.xattrs.add(name=name, value=value)
        for chunk in entry.chunks:
            out.chunks.add(
                file_offset=chunk.file_offset,
                size=chunk.size,
                blob_offset=chunk.blob_offset,
                blob_end=chunk.blob_end,
                inner_offset=chunk.inner_offset,
                digest=chunk.digest,
            )
    if isinstance(index, GzipIndex):
        message.checkpoint_spacing = index.spacing
        for point in index.checkpoints:
            message.checkpoints.add(
                compressed_offset=point.compressed_offset,
                uncompressed_offset=point.uncompressed_offset,
                bits=point.bits,
                window=point.window,
            )
    return MAGIC + bytes([VERSION]) + zlib.compress(message.SerializeToString(), 6)


def loads(data: bytes, *, max_decoded: int = MAX_DECODED) -> LayerIndex | GzipIndex:
    """Decode and validate :func:`dumps`'s output; :class:`LayerFormatError` otherwise."""
    if len(data) < len(MAGIC) + 1 or not data.startswith(MAGIC):
        raise LayerFormatError("not a dffs layer index (bad magic)")
    version = data[len(MAGIC)]
    if version != VERSION:
        raise LayerFormatError(f"layer index format version {version} is not supported (this dffs reads {VERSION})")
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data[len(MAGIC) + 1 :], max_decoded + 1)
    except zlib.error as err:
        raise LayerFormatError(f"layer index is corrupt: {err}") from None
    if len(raw) > max_decoded:
        raise LayerFormatError(f"layer index inflates past {max_decoded} bytes")
    if not inflater.eof or inflater.unused_data:
        raise LayerFormatError("layer index is truncated or has trailing bytes")
    message = layers_pb2.LayerIndex()
    try:
        message.ParseFromString(raw)
    except (DecodeError, RecursionError, ValueError) as err:
        raise LayerFormatError(f"layer index does not parse: {err}") from None
    return from_message(message)


def from_message(message: layers_pb2.LayerIndex) -> LayerIndex | GzipIndex:
    """A validated index from its protobuf message."""
    try:
        fmt = _FORMATS_BACK[message.format]
    except KeyError:
        raise LayerFormatError(f"layer index has unknown format {message.format}") from None
    entries = []
    for item in message.entries:
        kind = _KINDS_BACK.get(item.kind)
        if kind is None:
            raise LayerFormatError(f"layer index entry {item.path[:200]!r} has unknown kind {item.kind}")
        entries.append(
            Entry(
                path=os.fsdecode(item.path),
                kind=kind,
                mode=item.mode,
                uid=item.uid,
                gid=item.gid,
                size=item.size,
                mtime=item.mtime,
                link_target=os.fsdecode(item.link_target),
                devmajor=item.devmajor,
                devminor=item.devminor,
                xattrs=tuple((x.name, x.value) for x in item.xattrs),
                offset=item.offset,
                chunks=tuple(
                    Chunk(c.file_offset, c.size, c.blob_offset, c.blob_end, c.inner_offset, c.digest)
                    for c in item.chunks
                ),
                implied=item.implied,
            )
        )
    tree = LayerIndex(
        entries, format=fmt, blob_digest=message.blob_digest, blob_size=message.blob_size, tar_size=message.tar_size
    )
    if fmt is not Format.GZIP:
        if message.checkpoints or message.checkpoint_spacing:
            raise LayerFormatError(f"layer index for a {fmt} layer has gzip checkpoints")
        return tree
    points = tuple(
        Checkpoint(p.compressed_offset, p.uncompressed_offset, p.bits, p.window) for p in message.checkpoints
    )
    return GzipIndex(tree, points, message.checkpoint_spacing)
