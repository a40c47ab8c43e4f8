"""Unmodified gzip layers through a seekable index: built in one pass over a streamed
blob, then any range read from the nearest checkpoint, fetching little.

Layers are built offline with tarfile + gzip, and as real images with umoci + skopeo
pushed to Debian's docker-registry (blobs streamed and range-read over HTTP)."""

from __future__ import annotations

import gzip
import http.client
import io
import random
import tarfile
import zlib

import pytest
import trio
from layer_builds import (
    RangeFetcher,
    assert_same_tree,
    every_kind_tar,
    extracted_tree,
    gzip_blob,
    sha256,
    tree_through_layer,
)
from registry import Registry, build_busybox_image

from dffs.layers import IndexRequired, LayerDigestError, LayerFormatError, build_index, codec, open_layer
from dffs.layers.gzindex import _PREFIXES, GzipIndex, GzipReader

GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
SPACING = 1 << 20  # small, so that a test layer has many checkpoints


async def stream(blob: bytes, chunk: int = 300_001):
    for start in range(0, len(blob), chunk):
        await trio.lowlevel.checkpoint()
        yield blob[start : start + chunk]


class BlobFetch:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.requested = 0

    async def __call__(self, offset: int, length: int) -> bytes:
        self.requested += length
        return self.blob[offset : offset + length]


@pytest.fixture(scope="module")
def layer_blob():
    tar = every_kind_tar(seed=7, big=6 << 20)
    return tar, gzip_blob(tar)


async def test_tree_and_ranges_through_the_index_equal_the_tar(layer_blob, tmp_path):
    tar, blob = layer_blob
    index_bytes = await build_index(GZ, stream(blob), digest=sha256(blob), spacing=SPACING)
    index = codec.loads(index_bytes)
    assert isinstance(index, GzipIndex) and index.tree.tar_size == len(tar)
    assert len(index.checkpoints) >= len(tar) // SPACING  # about one per MiB of tar
    layer = await open_layer(GZ, {}, BlobFetch(blob), len(blob), index_bytes, digest=sha256(blob))
    assert_same_tree(extracted_tree(tar, tmp_path), await tree_through_layer(layer, seed=3))

    reader = GzipReader(index, BlobFetch(blob))
    rng = random.Random(5)
    for _ in range(300):
        start = rng.randrange(len(tar))
        size = rng.choice([1, 7, 4096, 100_000, 3 << 20])
        assert await reader.read(start, size) == tar[start : start + size], (start, size)


async def test_a_small_file_fetches_one_span_not_the_layer(layer_blob):
    tar, blob = layer_blob
    index = codec.loads(await build_index(GZ, stream(blob), spacing=SPACING))
    for path in ("etc/passwd", "usr/share/tagged", "var/cache/fresh", "etc/replaced"):
        fetch = BlobFetch(blob)
        layer = await open_layer(GZ, {}, fetch, len(blob), codec.dumps(index))
        entry = layer.index.lookup(path)
        assert await layer.read(entry, 0, entry.size) == tar[entry.offset : entry.offset + entry.size]
        # Bound from the checkpoints: from the one before the file to the one after it.
        points = index.checkpoints
        before = points[index.checkpoint_at(entry.offset)]
        after = index.compressed_bound(entry.offset + entry.size)
        assert fetch.requested <= after - before.start + GzipReader.FIRST_FETCH, path
        assert fetch.requested < len(blob) // 4, path


async def test_sequential_reads_continue_instead_of_restarting(layer_blob):
    tar, blob = layer_blob
    index = codec.loads(await build_index(GZ, stream(blob), spacing=SPACING))
    fetch = BlobFetch(blob)
    layer = await open_layer(GZ, {}, fetch, len(blob), codec.dumps(index))
    big = layer.index.lookup("usr/lib/big.bin")
    got = bytearray()
    while len(got) < big.size:
        got += await layer.read(big, len(got), 128 << 10)
    assert bytes(got) == tar[big.offset : big.offset + big.size]
    span = index.compressed_bound(big.offset + big.size) - index.checkpoints[index.checkpoint_at(big.offset)].start
    assert fetch.requested <= span + GzipReader.MAX_FETCH  # each compressed byte about once


async def test_reads_cross_gzip_member_boundaries():
    tar = every_kind_tar(seed=2, big=2 << 20)
    cuts = sorted(random.Random(1).sample(range(1, len(tar)), 3))
    parts = [tar[a:b] for a, b in zip([0, *cuts], [*cuts, len(tar)], strict=True)]
    blob = b"".join(gzip.compress(part, 6, mtime=0) for part in parts)
    index = codec.loads(await build_index(GZ, stream(blob), spacing=SPACING))
    assert [p.uncompressed_offset for p in index.checkpoints if not p.window] == [0, *cuts]
    reader = GzipReader(index, BlobFetch(blob))
    for cut in cuts:
        assert await reader.read(cut - 1000, 2000) == tar[cut - 1000 : cut + 1000]
    assert await reader.read(0, len(tar)) == tar


def test_empty_block_prefixes_end_at_every_bit_offset():
    # After the prefix, a final stored block must parse: it starts with a 3-bit header at
    # exactly `skip` bits into the byte and then depends on the original byte alignment.
    payload = b"aligned stored block"
    for skip, (whole, last) in _PREFIXES.items():
        header = 0b001 << skip  # BFINAL=1, BTYPE=00, at bit `skip`
        length = len(payload).to_bytes(2, "little") + (len(payload) ^ 0xFFFF).to_bytes(2, "little")
        stream_bytes = whole + bytes([last | (header & 0xFF)]) + bytes([header >> 8] if skip > 5 else []) + length
        inflater = zlib.decompressobj(-15)
        assert inflater.decompress(stream_bytes + payload) == payload, skip
        assert inflater.eof


async def test_reads_from_checkpoints_at_every_bit_offset():
    # Compressible data ends deflate blocks anywhere in a byte (random data makes
    # byte-aligned stored blocks), so this layer's checkpoints start at all bit offsets.
    rng = random.Random(11)
    words = [rng.randbytes(rng.randrange(2, 9)).hex() for _ in range(3000)]
    text = " ".join(rng.choice(words) for _ in range(1_500_000)).encode()
    tar = make_tar_with("words.txt", text)
    blob = gzip.compress(tar, 6, mtime=0)
    index = codec.loads(await build_index(GZ, stream(blob), spacing=64 << 10))
    assert {p.bits for p in index.checkpoints} >= set(range(1, 8))
    reader = GzipReader(index, BlobFetch(blob))
    for point in index.checkpoints[1:-1]:
        here = point.uncompressed_offset
        assert await reader.read(here, 5000) == tar[here : here + 5000], point


def make_tar_with(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


async def test_bad_blobs_fail_the_build_with_a_clear_error(layer_blob):
    tar, blob = layer_blob
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x55
    cases = [
        (blob[: len(blob) // 3], LayerFormatError),
        (blob[:-4], LayerFormatError),  # trailer cut: the gzip stream does not end
        (bytes(flipped), LayerFormatError),
        (b"not gzip at all" * 100, LayerFormatError),
        (gzip.compress(b"\x01" * 5000), LayerFormatError),  # gzip, but not a tar
        (b"", LayerFormatError),
    ]
    for bad, error in cases:
        with pytest.raises(error):
            await build_index(GZ, stream(bad), spacing=SPACING)
    with pytest.raises(LayerDigestError):
        await build_index(GZ, stream(blob), digest="sha256:" + "0" * 64, spacing=SPACING)


async def test_open_and_read_errors_are_clear(layer_blob):
    tar, blob = layer_blob
    with pytest.raises(IndexRequired):
        await open_layer(GZ, {}, BlobFetch(blob), len(blob))
    index_bytes = await build_index(GZ, stream(blob), spacing=SPACING)
    with pytest.raises(LayerFormatError, match="not this blob"):
        await open_layer(GZ, {}, BlobFetch(blob), len(blob) + 1, index_bytes)
    with pytest.raises(LayerFormatError, match="for a gzip layer"):
        await open_layer("application/vnd.oci.image.layer.v1.tar", {}, BlobFetch(blob), len(blob), index_bytes)
    big = codec.loads(index_bytes).tree.lookup("usr/lib/big.bin")
    truncated = await open_layer(GZ, {}, BlobFetch(blob[: len(blob) // 2]), len(blob), index_bytes)
    with pytest.raises(LayerFormatError, match="truncated"):
        await truncated.read(big, big.size - 10, 10)
    other = gzip_blob(every_kind_tar(seed=99, big=6 << 20))
    lying = await open_layer(GZ, {}, BlobFetch(other.ljust(len(blob), b"\0")[: len(blob)]), len(blob), index_bytes)
    with pytest.raises(LayerFormatError):
        for start in range(0, big.size, 1 << 20):  # another blob's bytes do not inflate from these checkpoints
            await lying.read(big, start, 4096)


@pytest.mark.slow
async def test_real_image_layers_from_a_registry(tmp_path):
    with Registry(tmp_path / "registry") as registry:
        image = build_busybox_image(registry, "layers/busybox", "v1", layers=3, payload_bytes=3 << 20)
        for digest in image.layers:
            blob = _get_blob(registry, image.repo, digest)
            index_bytes = await build_index(GZ, stream(blob, 1 << 16), digest=digest, spacing=SPACING)
            fetch = RangeFetcher(registry, image.repo, digest)
            layer = await open_layer(GZ, {}, fetch, image.sizes[digest], index_bytes, digest=digest)
            assert_same_tree(extracted_tree(gzip.decompress(blob), tmp_path), await tree_through_layer(layer))
        message_layer = image.layers[1]
        fetch = RangeFetcher(registry, image.repo, message_layer)
        layer = await open_layer(GZ, {}, fetch, image.sizes[message_layer], await _index(registry, image, 1))
        entry = layer.index.lookup("etc/message")
        assert (await layer.read(entry, 0, entry.size)).decode() == image.message + "\n"
        assert fetch.requests >= 1


async def _index(registry, image, number: int) -> bytes:
    digest = image.layers[number]
    return await build_index(GZ, stream(_get_blob(registry, image.repo, digest)), digest=digest)


def _get_blob(registry, repo: str, digest: str) -> bytes:
    connection = http.client.HTTPConnection(registry.host, registry.port, timeout=30)
    try:
        connection.request("GET", f"/v2/{repo}/blobs/{digest}")
        response = connection.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        connection.close()
