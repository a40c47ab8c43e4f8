#!/usr/bin/env python3
"""Layer formats: what a gzip layer's seekable index costs and what a lazy read fetches.

Two layers, gzip -6 like a registry's, both about --mib MiB compressed:

  random    one incompressible file of that size and a small file (the issue's anchor:
            "a layer with a 100 MiB random file and a small file")
  files     real files from this machine (/usr/lib, /usr/share), compressible like a
            distribution's layer

For each: the index is built in one pass over the blob streamed in 1 MiB chunks
(``dffs.layers.build_index``, as a seed does) — build speed in MB/s of blob, index
size per GB of blob; then the blob is served by nginx on loopback and a fresh reader
opens the layer with the index and reads one small file by HTTP Range — bytes fetched
and wall time, median of --repeat cold opens.  The uncompressed tar of the same layer
is read too (index from its headers, fetched by range) for comparison.  With
``--estargz`` the layers are also pushed to a docker-registry, converted by
``ctr-remote image convert --estargz --oci`` through a containerd, and the same small
file is read from the eStargz blob (footer + TOC + its chunk) by Range from the registry.

Run under ``flock /tmp/dffs-bench.lock`` (benchmarks never overlap); figures taken
while other work runs on the machine are provisional.  Usage:

  .venv/bin/python scripts/bench/layers.py [--mib 100] [--repeat 5] [--spacing-mib 4] [--estargz]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the registry, containerd and image helpers the tests use
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, nginx_serving  # noqa: E402

from dffs.layers import build_index, open_layer  # noqa: E402

GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR = "application/vnd.oci.image.layer.v1.tar"
SMALL = "data/small.txt"


def random_tar(size: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in (("data/big.bin", os.urandom(size)), (SMALL, b"hello from a small file\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def files_tar(compressed_target: int) -> bytes:
    """System files until their gzip would be about ``compressed_target`` (ratio guessed at 2.5)."""
    out = io.BytesIO()
    budget = int(compressed_target * 2.5)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for top in ("/usr/lib", "/usr/share"):
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames.sort()
                for name in sorted(filenames):
                    path = os.path.join(dirpath, name)
                    if out.tell() > budget:
                        break
                    try:
                        if os.path.islink(path) or not os.path.isfile(path):
                            continue
                        archive.add(path, arcname=path.lstrip("/"), recursive=False)
                    except OSError:
                        continue
        info = tarfile.TarInfo(SMALL)
        data = b"hello from a small file\n"
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


class RangeFetch:
    """Blob bytes by HTTP Range from nginx over one keep-alive connection."""

    def __init__(self, base: str, name: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=30)
        self.path = f"/{name}"
        self.requested = 0
        self.requests = 0

    def _get(self, offset: int, length: int) -> bytes:
        self.connection.request("GET", self.path, headers={"Range": f"bytes={offset}-{offset + length - 1}"})
        response = self.connection.getresponse()
        body = response.read()
        assert response.status == 206, response.status
        return body

    async def __call__(self, offset: int, length: int) -> bytes:
        self.requested += length
        self.requests += 1
        return await trio.to_thread.run_sync(self._get, offset, length)


async def chunks(blob: bytes, size: int = 1 << 20):
    for start in range(0, len(blob), size):
        yield blob[start : start + size]


async def measure(name: str, tar: bytes, root: Path, base: str, repeat: int, spacing: int) -> dict:
    blob = gzip.compress(tar, 6, mtime=0)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    (root / f"{name}.tar.gz").write_bytes(blob)
    (root / f"{name}.tar").write_bytes(tar)
    builds = []
    for _ in range(max(1, repeat // 2)):
        started = time.perf_counter()
        index_bytes = await build_index(GZ, chunks(blob), digest=digest, spacing=spacing)
        builds.append(time.perf_counter() - started)
    build_s = statistics.median(builds)
    result = {
        "layer": name,
        "blob_mib": round(len(blob) / 2**20, 1),
        "tar_mib": round(len(tar) / 2**20, 1),
        "build_mb_s": round(len(blob) / build_s / 1e6, 1),
        "index_kib": round(len(index_bytes) / 1024, 1),
        "index_mib_per_gib_blob": round(len(index_bytes) / len(blob) * 1024, 2),
    }
    for kind, media, blob_name, shared in (
        ("gzip", GZ, f"{name}.tar.gz", index_bytes),
        ("tar", TAR, f"{name}.tar", None),
    ):
        size = len(blob) if kind == "gzip" else len(tar)
        times, fetched, requests = [], [], []
        for _ in range(repeat):
            fetch = RangeFetch(base, blob_name)
            started = time.perf_counter()
            layer = await open_layer(media, {}, fetch, size, shared)
            entry = layer.index.lookup(SMALL)
            data = await layer.read(entry, 0, entry.size)
            times.append(time.perf_counter() - started)
            assert data == b"hello from a small file\n"
            fetched.append(fetch.requested)
            requests.append(fetch.requests)
            fetch.connection.close()
        result[f"{kind}_small_read_ms"] = round(statistics.median(times) * 1000, 2)
        result[f"{kind}_small_read_fetched_kib"] = round(statistics.median(fetched) / 1024, 1)
        result[f"{kind}_small_read_requests"] = int(statistics.median(requests))
    return result


async def measure_estargz(layers: dict[str, bytes], work: Path, repeat: int) -> list[dict]:
    from containerd import Containerd
    from layer_builds import RangeFetcher, ctr_remote, push_oci_image
    from registry import Registry

    results = []
    with Registry(work / "registry") as registry, Containerd(work / "containerd") as containerd:
        blobs = [(gzip.compress(tar, 6, mtime=0), GZ, tar) for tar in layers.values()]
        push_oci_image(registry, "bench/layers", "src", blobs, work)
        started = time.perf_counter()
        ctr_remote.convert(
            containerd, f"{registry.address}/bench/layers:src", f"{registry.address}/bench/layers:esgz", "--estargz"
        )
        convert_s = time.perf_counter() - started
        manifest = registry.get_manifest("bench/layers", "esgz")[1]
        for name, descriptor in zip(layers, manifest["layers"], strict=True):
            times, fetched, requests = [], [], []
            for _ in range(repeat):
                fetch = RangeFetcher(registry, "bench/layers", descriptor["digest"])
                started = time.perf_counter()
                layer = await open_layer(GZ, descriptor["annotations"], fetch, descriptor["size"])
                entry = layer.index.lookup(SMALL)
                assert await layer.read(entry, 0, entry.size) == b"hello from a small file\n"
                times.append(time.perf_counter() - started)
                fetched.append(fetch.requested)
                requests.append(fetch.requests)
            results.append(
                {
                    "layer": name,
                    "estargz_blob_mib": round(descriptor["size"] / 2**20, 1),
                    "estargz_convert_s_all_layers": round(convert_s, 1),
                    "estargz_small_read_ms": round(statistics.median(times) * 1000, 2),
                    "estargz_small_read_fetched_kib": round(statistics.median(fetched) / 1024, 1),
                    "estargz_small_read_requests": int(statistics.median(requests)),
                }
            )
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=100, help="compressed size of each layer (MiB)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--spacing-mib", type=int, default=4, help="uncompressed bytes between checkpoints")
    parser.add_argument("--estargz", action="store_true", help="also convert with ctr-remote and read eStargz")
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}))
    layers = {"random": random_tar(args.mib << 20), "files": files_tar(args.mib << 20)}
    with tempfile.TemporaryDirectory(prefix="dffs-bench-layers.") as work:
        root = Path(work)
        (root / "www").mkdir()
        with nginx_serving(root / "www") as base:
            for name, tar in layers.items():
                result = await measure(name, tar, root / "www", base, args.repeat, args.spacing_mib << 20)
                print(json.dumps(result), flush=True)
        if args.estargz:
            for result in await measure_estargz(layers, root, args.repeat):
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    trio.run(main)
