"""eStargz (and ctr-remote's other conversions) through dffs.layers, on real parts: an
image built offline is pushed to Debian's docker-registry, pulled into a real
containerd and converted by Debian's ``ctr-remote image convert --estargz --oci``, and
the converted blobs are read by HTTP Range from the registry as a daemon would."""

from __future__ import annotations

import gzip
import random

import pytest
from containerd import Containerd
from layer_builds import (
    RangeFetcher,
    assert_same_tree,
    ctr_remote,
    every_kind_tar,
    extracted_tree,
    gzip_blob,
    push_oci_image,
    tree_through_layer,
)
from registry import Registry

from dffs.layers import LayerDigestError, LayerError, LayerFormatError, NotLazy, open_layer
from dffs.layers.estargz import TOC_DIGEST_ANNOTATION, TOC_NAME

GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
CHUNK = 64 << 10

# ctr-remote comes with scripts/setup.sh (Debian's stargz-snapshotter): no skip when it is missing.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The test image as pushed, and as eStargz, zstd:chunked and uncompressed conversions."""
    work = tmp_path_factory.mktemp("estargz")
    with Registry(work / "registry") as registry, Containerd(work / "containerd") as containerd:
        tars = [every_kind_tar(seed=1, big=2 << 20), every_kind_tar(seed=2, big=300_000)]
        push_oci_image(registry, "layers/src", "v1", [(gzip_blob(t), GZ, t) for t in tars], work)
        source = f"{registry.address}/layers/src:v1"
        images = {}
        for tag, options in {
            "esgz": ("--estargz", "--estargz-chunk-size", str(CHUNK)),
            "zstd": ("--zstdchunked",),
            "plain": ("--uncompress",),
        }.items():
            ctr_remote.convert(containerd, source, f"{registry.address}/layers/src:{tag}", *options)
            images[tag] = registry.get_manifest("layers/src", tag)[1]
        yield registry, images


def _whole(registry, digest: str) -> bytes:
    import http.client

    connection = http.client.HTTPConnection(registry.host, registry.port, timeout=30)
    try:
        connection.request("GET", f"/v2/layers/src/blobs/{digest}")
        response = connection.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        connection.close()


async def test_estargz_tree_equals_tarfile_extraction(converted, tmp_path):
    registry, images = converted
    for descriptor in images["esgz"]["layers"]:
        assert TOC_DIGEST_ANNOTATION in descriptor["annotations"]
        fetch = RangeFetcher(registry, "layers/src", descriptor["digest"])
        layer = await open_layer(
            descriptor["mediaType"], descriptor["annotations"], fetch, descriptor["size"], digest=descriptor["digest"]
        )
        assert layer.format == "estargz"
        assert layer.index.lookup(TOC_NAME) is not None  # a plain unpack writes it too
        assert any(len(e.chunks) > 1 for e in layer.index)  # the big file really is chunked
        expected = extracted_tree(gzip.decompress(_whole(registry, descriptor["digest"])), tmp_path)
        # The TOC keeps whole seconds (rounded), the tar headers keep fractions.
        assert_same_tree(expected, await tree_through_layer(layer, seed=9), mtime_slack=1)
        big = layer.index.lookup("usr/lib/big.bin")
        data = expected["usr/lib/big.bin"]["data"]
        rng = random.Random(descriptor["digest"])
        for _ in range(40):  # random ranges, across chunk boundaries too
            start, size = rng.randrange(big.size), rng.choice([1, 100, CHUNK - 1, CHUNK + 7, 3 * CHUNK])
            assert await layer.read(big, start, size) == data[start : start + size], (start, size)


async def test_a_small_file_fetches_only_its_chunk(converted):
    registry, images = converted
    descriptor = images["esgz"]["layers"][0]
    fetch = RangeFetcher(registry, "layers/src", descriptor["digest"])
    layer = await open_layer(descriptor["mediaType"], descriptor["annotations"], fetch, descriptor["size"])
    opened = fetch.requested  # footer + TOC
    assert opened < descriptor["size"] // 10
    entry = layer.index.lookup("etc/passwd")
    assert await layer.read(entry, 0, 100) == b"root:x:0:0:root:/root:/bin/sh\n"
    (chunk,) = entry.chunks
    assert fetch.requested - opened == chunk.blob_end - chunk.blob_offset < 4096
    big = layer.index.lookup("usr/lib/big.bin")
    before = fetch.requested
    middle = big.size // 2
    await layer.read(big, middle, 1000)
    assert fetch.requested - before <= 2 * (CHUNK + 1024)  # one or two chunks of the 2 MiB file


async def test_without_the_annotation_the_footer_finds_the_toc(converted):
    registry, images = converted
    descriptor = images["esgz"]["layers"][1]
    fetch = RangeFetcher(registry, "layers/src", descriptor["digest"])
    layer = await open_layer(GZ, {}, fetch, descriptor["size"])
    entry = layer.index.lookup("usr/share/tagged")
    assert await layer.read(entry, 0, 100) == b"xattrs\n"


async def test_a_toc_that_is_not_the_annotated_one_is_refused(converted):
    registry, images = converted
    descriptor = images["esgz"]["layers"][0]
    fetch = RangeFetcher(registry, "layers/src", descriptor["digest"])
    with pytest.raises(LayerDigestError, match="TOC"):
        await open_layer(GZ, {TOC_DIGEST_ANNOTATION: "sha256:" + "1" * 64}, fetch, descriptor["size"])


async def test_corrupted_or_truncated_estargz_blobs_give_clear_errors(converted):
    registry, images = converted
    descriptor = images["esgz"]["layers"][0]
    blob = _whole(registry, descriptor["digest"])
    annotations = descriptor["annotations"]

    async def exact(offset, length):
        return blob[offset : offset + length]

    layer = await open_layer(GZ, annotations, exact, len(blob))
    big = layer.index.lookup("usr/lib/big.bin")
    chunk = big.chunks[3]
    for position in (chunk.blob_offset + 20, (chunk.blob_offset + chunk.blob_end) // 2, chunk.blob_end - 3):
        damaged = bytearray(blob)
        damaged[position] ^= 0x40

        async def bad(offset, length, damaged=bytes(damaged)):
            return damaged[offset : offset + length]

        broken = await open_layer(GZ, annotations, bad, len(blob))
        with pytest.raises(LayerError):  # inflate error, gzip CRC, or the chunk digest
            await broken.read(big, chunk.file_offset, 10)
    for cut in (len(blob) - 10, len(blob) // 2, 30):
        short = blob[:cut]

        async def truncated(offset, length, short=short):
            return short[offset : offset + length]

        with pytest.raises(LayerFormatError):
            await open_layer(GZ, annotations, truncated, len(short))


async def test_zstd_layers_are_not_lazy_and_uncompressed_ones_are(converted, tmp_path):
    registry, images = converted
    for descriptor in images["zstd"]["layers"]:
        fetch = RangeFetcher(registry, "layers/src", descriptor["digest"])
        with pytest.raises(NotLazy, match="zstd"):
            await open_layer(descriptor["mediaType"], descriptor.get("annotations", {}), fetch, descriptor["size"])
        assert fetch.requests == 0
    for descriptor in images["plain"]["layers"]:
        fetch = RangeFetcher(registry, "layers/src", descriptor["digest"])
        layer = await open_layer(descriptor["mediaType"], {}, fetch, descriptor["size"], digest=descriptor["digest"])
        assert layer.format == "tar"
        assert fetch.requested < descriptor["size"]  # headers, not the layer
        expected = extracted_tree(_whole(registry, descriptor["digest"]), tmp_path)
        assert_same_tree(expected, await tree_through_layer(layer, seed=4))
