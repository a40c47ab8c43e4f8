"""Hostile input for the parts that read what registries and peers send: the index
codec, the eStargz footer and TOC parsers, the indexed_gzip export parser, and reads
through an index that lies.  Whatever comes in, the answer is a valid result or a
LayerError — never another exception (hypothesis)."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import zlib

import trio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dffs.api import layers_pb2
from dffs.layers import LayerError, LayerFormatError, NotLazy, codec
from dffs.layers.estargz import Toc, extract_toc, parse_footer, parse_toc
from dffs.layers.gzindex import WINDOW_SIZE, Checkpoint, GzipIndex, GzipReader, parse_gzidx
from dffs.layers.tree import Chunk, Format, Kind, LayerIndex, TreeBuilder

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = st.sampled_from(["a", "b", "dir", "ü", "x y", ".wh.a", ".wh..wh..opq", ".wh..wh.plnk", "..", ".", "\udcff"])
PATHS = st.lists(NAMES, min_size=1, max_size=4).map("/".join)
KINDS = st.sampled_from(list(Kind))
DIGESTS = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())


@st.composite
def trees(draw, fmt=Format.TAR):
    """Valid trees made the way real ones are: members applied by the TreeBuilder."""
    tar_size = draw(st.integers(0, 1 << 40))
    blob_size = draw(st.integers(1, 1 << 40))
    builder = TreeBuilder()
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(KINDS)
        size = draw(st.integers(0, 1 << 20)) if kind is Kind.REG else 0
        chunks = []
        offset = 0
        if fmt is Format.ESTARGZ and size:
            at = 0
            while at < size:
                part = min(size - at, draw(st.integers(1, size)))
                start = draw(st.integers(0, blob_size - 1))
                chunks.append(Chunk(at, part, start, draw(st.integers(start + 1, blob_size)), 0, draw(DIGESTS)))
                at += part
        elif size:
            assume(tar_size >= size)
            offset = draw(st.integers(0, tar_size - size))
        try:
            builder.add(
                draw(PATHS),
                kind,
                mode=draw(st.integers(0, 0o7777)),
                uid=draw(st.integers(0, 2**32 - 1)),
                gid=draw(st.integers(0, 2**32 - 1)),
                size=size,
                mtime=draw(st.floats(-1e10, 1e10, allow_nan=False)),
                link_target=draw(PATHS) if kind in (Kind.SYMLINK, Kind.HARDLINK) else "",
                devmajor=draw(st.integers(0, 2**32 - 1)),
                devminor=draw(st.integers(0, 2**32 - 1)),
                xattrs=draw(
                    st.dictionaries(
                        st.binary(min_size=1, max_size=20).filter(lambda b: b"\0" not in b),
                        st.binary(max_size=50),
                        max_size=3,
                    )
                ),
                offset=offset,
                chunks=chunks,
            )
        except (LayerFormatError, NotLazy):
            pass
    try:
        return builder.finish(format=fmt, blob_digest=draw(DIGESTS), blob_size=blob_size, tar_size=tar_size)
    except (LayerFormatError, NotLazy):
        assume(False)


@SETTINGS
@given(st.one_of(trees(Format.TAR), trees(Format.ESTARGZ)))
def test_index_round_trips(tree):
    assert codec.loads(codec.dumps(tree)) == tree


@SETTINGS
@given(st.data())
def test_gzip_index_round_trips(data):
    tree = data.draw(trees(Format.GZIP))
    tree = LayerIndex(
        tree.entries,
        format=Format.GZIP,
        blob_digest=tree.blob_digest,
        blob_size=tree.blob_size + 1,
        tar_size=tree.tar_size,
    )
    points = [Checkpoint(data.draw(st.integers(0, min(20, tree.blob_size))), 0)]
    for _ in range(data.draw(st.integers(0, 5))):
        last = points[-1]
        bits = data.draw(st.integers(0, 7))
        low = max(1, last.compressed_offset)
        if low > tree.blob_size:
            break
        points.append(
            Checkpoint(
                data.draw(st.integers(low, tree.blob_size)),
                data.draw(st.integers(last.uncompressed_offset, tree.tar_size)),
                bits,
                data.draw(st.sampled_from([b"", os.urandom(WINDOW_SIZE)])) if not bits else os.urandom(WINDOW_SIZE),
            )
        )
    index = GzipIndex(tree, tuple(points), data.draw(st.integers(WINDOW_SIZE, 1 << 30)))
    assert codec.loads(codec.dumps(index)) == index


def _only_layer_errors(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except LayerError:
        return None


@SETTINGS
@given(st.binary(max_size=2000))
def test_garbage_is_not_an_index(raw):
    _only_layer_errors(codec.loads, raw)
    _only_layer_errors(codec.loads, codec.MAGIC + bytes([codec.VERSION]) + raw)
    _only_layer_errors(codec.loads, codec.MAGIC + bytes([codec.VERSION]) + zlib.compress(raw))


@SETTINGS
@given(trees(Format.TAR), st.data())
def test_mutated_index_messages_decode_or_fail_cleanly(tree, data):
    raw = bytearray(zlib.decompress(codec.dumps(tree)[5:]))
    assume(raw)
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    encoded = codec.MAGIC + bytes([codec.VERSION]) + zlib.compress(bytes(raw[:cut]))
    result = _only_layer_errors(codec.loads, encoded)
    if result is not None:
        assert codec.loads(codec.dumps(result)) == result  # whatever passed is self-consistent


@SETTINGS
@given(
    st.lists(
        st.fixed_dictionaries(
            {"path": st.binary(max_size=30), "kind": st.integers(-1, 9), "size": st.integers(0, 2**64 - 1)},
            optional={
                "mode": st.integers(0, 2**32 - 1),
                "link_target": st.binary(max_size=10),
                "offset": st.integers(0, 2**64 - 1),
                "mtime": st.floats(),
            },
        ),
        max_size=6,
    ),
    st.integers(-1, 5),
)
def test_hostile_messages_are_refused_or_valid(entries, fmt):
    message = layers_pb2.LayerIndex(format=fmt, tar_size=1000, blob_size=1000)
    for fields in entries:
        message.entries.add(**fields)
    _only_layer_errors(codec.from_message, message)


# --------------------------------------------------------------- eStargz inputs
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)
TOC_FIELDS = {
    "name": st.one_of(PATHS, JSON),
    "type": st.one_of(st.sampled_from(["reg", "dir", "symlink", "hardlink", "char", "block", "fifo", "chunk"]), JSON),
    "size": st.one_of(st.integers(0, 1 << 20), JSON),
    "offset": st.one_of(st.integers(0, 5000), JSON),
    "chunkOffset": st.one_of(st.integers(0, 1 << 20), JSON),
    "chunkSize": st.one_of(st.integers(0, 1 << 20), JSON),
    "chunkDigest": st.one_of(DIGESTS, JSON),
    "innerOffset": st.one_of(st.integers(0, 100), JSON),
    "linkName": st.one_of(PATHS, JSON),
    "modtime": st.one_of(st.sampled_from(["2024-01-01T00:00:00Z", "x", "9999-99-99T00:00:00Z"]), JSON),
    "mode": st.one_of(st.integers(0, 0o177777), JSON),
    "xattrs": st.one_of(st.dictionaries(st.text(max_size=8), st.sampled_from(["eQ==", "!!"])), JSON),
}
TOC_ENTRY = st.fixed_dictionaries({}, optional=TOC_FIELDS)


@SETTINGS
@given(st.one_of(JSON, st.fixed_dictionaries({"version": st.just(1), "entries": st.lists(TOC_ENTRY, max_size=8)})))
def test_hostile_tocs_are_refused_or_valid(document):
    toc = Toc(json.dumps(document).encode(), 5000, 6000, 512)
    index = _only_layer_errors(parse_toc, toc, blob_size=6051)
    if index is not None:
        assert index.format is Format.ESTARGZ and codec.loads(codec.dumps(index)) == index


@SETTINGS
@given(st.binary(max_size=200), st.binary(max_size=60))
def test_footers_and_toc_members_never_crash(raw, tail):
    parse_footer(tail)
    parse_footer(raw)
    _only_layer_errors(extract_toc, raw, 0, len(raw))
    _only_layer_errors(extract_toc, gzip.compress(raw), 0, 10)
    _only_layer_errors(parse_gzidx, raw)
    _only_layer_errors(parse_gzidx, b"GZIDX\x01\x00" + raw)


def _sample_layer() -> tuple[bytes, bytes]:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for number in range(40):
            data = (b"file %d " % number) * 3000
            info = tarfile.TarInfo(f"f{number}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    tar = out.getvalue()
    return tar, gzip.compress(tar, 6, mtime=0)


SAMPLE_TAR, SAMPLE_BLOB = _sample_layer()


@SETTINGS
@given(st.data())
def test_reads_through_a_lying_gzip_index_fail_cleanly(data):
    from dffs.layers.gzindex import build_gzip_index

    honest = build_gzip_index(io.BytesIO(SAMPLE_BLOB).read, spacing=WINDOW_SIZE * 2)
    points = [honest.checkpoints[0]]
    for point in honest.checkpoints[1:]:
        points.append(
            Checkpoint(
                max(points[-1].compressed_offset, point.compressed_offset + data.draw(st.integers(-3, 3))),
                point.uncompressed_offset,
                data.draw(st.sampled_from([point.bits, data.draw(st.integers(0, 7))])),
                point.window if data.draw(st.booleans()) else os.urandom(WINDOW_SIZE),
            )
        )
    try:
        lying = GzipIndex(honest.tree, tuple(points), honest.spacing)
    except LayerFormatError:
        return

    async def fetch(offset, length):
        return SAMPLE_BLOB[offset : offset + length]

    async def main():
        reader = GzipReader(lying, fetch)
        start = data.draw(st.integers(0, len(SAMPLE_TAR) - 1))
        try:
            await reader.read(start, data.draw(st.integers(1, 100_000)))
        except LayerError:
            pass

    trio.run(main)
