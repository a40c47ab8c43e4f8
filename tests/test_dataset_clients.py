"""Real training-data clients reading through a real `dffs mount` of an nginx origin: PyTorch's DataLoader
with 4 worker processes, pyarrow reading Parquet columns, h5py reading HDF5 datasets, numpy.memmap.

Every check compares bytes or values with what the origin holds; origin traffic is read from nginx's log.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from mounts import MountProcess, is_mounted

h5py = pytest.importorskip("h5py")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")
torch = pytest.importorskip("torch")

KiB = 1024
MiB = 1024 * KiB
PIECE = 4 * MiB


@pytest.fixture
def mount(tmp_path):
    made: list[MountProcess] = []

    def start(*args: str, name: str = "mnt") -> MountProcess:
        m = MountProcess(tmp_path / name, tmp_path / f"{name}-data", *args)
        made.append(m)
        return m.start()

    yield start
    for m in made:
        m.stop()
        assert not is_mounted(m.mountpoint)


class FileDataset(torch.utils.data.Dataset):
    """Whole files by path, as an image-folder dataset reads them."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with open(self.paths[index], "rb") as f:
            data = f.read()
        return index, hashlib.sha256(data).hexdigest(), len(data)


def _collate(batch):
    return batch


def test_dataloader_with_four_workers_reads_every_sample_right(tmp_path, nginx_origin, make_file, mount):
    www = tmp_path / "www"
    sizes = {f"train/c{i % 4}/s{i:04d}.bin": (112 * KiB if i % 3 else 16 * KiB) + i for i in range(240)}
    digests = {path: make_file(www / "ds" / path, size, seed=i) for i, (path, size) in enumerate(sizes.items())}
    origin = nginx_origin(www)
    m = mount("--source", f"ds={origin.url('/ds/')}")
    root = m.mountpoint / "ds"
    paths = sorted(str(p) for p in root.rglob("*.bin"))  # the listing, as a Dataset's constructor walks it
    assert len(paths) == len(sizes)
    loader = torch.utils.data.DataLoader(
        FileDataset(paths),
        batch_size=16,
        shuffle=True,
        num_workers=4,
        collate_fn=_collate,
        generator=torch.Generator().manual_seed(7),
    )
    seen = {}
    for batch in loader:
        for index, digest, size in batch:
            seen[os.path.relpath(paths[index], root)] = (digest, size)
    assert seen == {path: (digests[path], sizes[path]) for path in sizes}
    origin.sync_log()
    # Each file's bytes left the origin once, however the four workers interleaved.
    for path, size in sizes.items():
        assert origin.body_bytes(f"/ds/{path}", "GET") == size, path


def test_pyarrow_reads_one_column_chunk_without_the_whole_file(tmp_path, nginx_origin, mount):
    www = tmp_path / "www"
    www.mkdir()
    rows = 1_500_000
    rng = np.random.default_rng(1)
    table = pa.table({f"c{i}": rng.random(rows) for i in range(6)})
    pq.write_table(table, www / "t.parquet", row_group_size=rows // 3, compression="none")
    size = (www / "t.parquet").stat().st_size
    meta = pq.ParquetFile(www / "t.parquet").metadata
    chunk = meta.row_group(1).column(3)
    assert size > 60 * MiB  # many pieces, so reading everything would show
    origin = nginx_origin(www)
    m = mount("--prefetch", "none")
    path = m.mountpoint / f"http/127.0.0.1:{origin.port}/t.parquet"
    got = pq.ParquetFile(path).read_row_group(1, columns=["c3"])
    assert got.column("c3").combine_chunks().equals(table.column("c3").slice(rows // 3, rows // 3).combine_chunks())
    origin.sync_log()
    sent = origin.body_bytes("/t.parquet", "GET")
    # The footer and the one chunk, each rounded out to the pieces it touches, and no more.
    footer_pieces = 1 + (meta.serialized_size + 8 > size % PIECE)
    chunk_pieces = (
        (chunk.data_page_offset + chunk.total_compressed_size - 1) // PIECE - chunk.data_page_offset // PIECE + 1
    )
    log = [(r.range, r.body_bytes) for r in origin.requests("/t.parquet")]
    assert sent <= (footer_pieces + chunk_pieces) * PIECE, (sent, log)
    assert sent < size / 3


def test_h5py_reads_a_slice_of_a_dataset(tmp_path, nginx_origin, mount):
    www = tmp_path / "www"
    www.mkdir()
    data = np.random.default_rng(2).random((4000, 1000), dtype=np.float32)  # 16 MB, contiguous
    with h5py.File(www / "d.h5", "w") as f:
        f.create_dataset("x", data=data)
        f.create_dataset("labels", data=np.arange(4000, dtype=np.int64))
    origin = nginx_origin(www)
    m = mount("--prefetch", "none")
    with h5py.File(m.mountpoint / f"http/127.0.0.1:{origin.port}/d.h5", "r") as f:
        assert np.array_equal(f["x"][3000:3010], data[3000:3010])
        assert np.array_equal(f["labels"][:], np.arange(4000))
    origin.sync_log()
    assert origin.body_bytes("/d.h5", "GET") < (www / "d.h5").stat().st_size  # not the whole file


def test_numpy_memmap_of_a_file_in_a_source_tree(tmp_path, nginx_origin, make_file, mount):
    www = tmp_path / "www"
    make_file(www / "ds" / "arr.u16", 12 * MiB, seed=4)
    origin = nginx_origin(www)
    m = mount("--source", f"ds={origin.url('/ds/')}", "--prefetch", "none")
    expected = np.fromfile(www / "ds" / "arr.u16", dtype=np.uint16)
    mapped = np.memmap(m.mountpoint / "ds" / "arr.u16", dtype=np.uint16, mode="r")
    idx = np.random.default_rng(9).integers(0, expected.size, size=300)
    assert np.array_equal(mapped[idx], expected[idx])
    assert np.array_equal(mapped[-1000:], expected[-1000:])
    del mapped


def test_prefetch_per_source(tmp_path, nginx_origin, make_file, mount):
    """`--prefetch shards=whole` fetches a shard's every piece after its first read, while the mount's
    default (`none`) leaves the other source's file at the one piece read."""
    www = tmp_path / "www"
    make_file(www / "shards" / "s0.tar", 3 * PIECE + 5, seed=1)
    make_file(www / "columns" / "c.bin", 3 * PIECE + 5, seed=2)
    origin = nginx_origin(www)
    m = mount(
        "--source",
        f"shards={origin.url('/shards/')}",
        "--source",
        f"columns={origin.url('/columns/')}",
        "--prefetch",
        "none",
        "--prefetch",
        "shards=whole",
    )
    with open(m.mountpoint / "columns" / "c.bin", "rb") as f:
        assert f.read(4096) == (www / "columns" / "c.bin").read_bytes()[:4096]
    with open(m.mountpoint / "shards" / "s0.tar", "rb") as f:
        assert f.read(4096) == (www / "shards" / "s0.tar").read_bytes()[:4096]

    def whole_shard_sent():
        origin.sync_log()
        return origin.body_bytes("/shards/s0.tar", "GET") >= 3 * PIECE + 5

    deadline = time.monotonic() + 30
    while not whole_shard_sent():
        assert time.monotonic() < deadline, "the shard was not prefetched whole"
        time.sleep(0.05)
    origin.sync_log()
    assert origin.body_bytes("/shards/s0.tar", "GET") == 3 * PIECE + 5
    assert origin.body_bytes("/columns/c.bin", "GET") <= PIECE  # the piece read, nothing ahead


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--prefetch", "nosuch=whole"), "no --source named 'nosuch'"),
        (("--prefetch", "ds=fast"), "the mode must be one of"),
    ],
)
def test_bad_per_source_prefetch_refuses_to_mount(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "-m", "dffs", "mount", str(tmp_path / "m"), "--data-dir", str(tmp_path / "d")]
        + ["--source", "ds=http://127.0.0.1:9/ds/", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_remount_keeps_listings_and_serves_them_while_the_origin_is_down(tmp_path, nginx_origin, make_file):
    www = tmp_path / "www"
    names = [f"f{i:03d}.bin" for i in range(40)]
    for i, name in enumerate(names):
        make_file(www / "ds" / name, 1000 + i, seed=i)
    origin = nginx_origin(www)
    data = tmp_path / "data"

    def mounted(*extra: str) -> MountProcess:
        return MountProcess(tmp_path / "mnt", data, "--source", f"ds={origin.url('/ds/')}", *extra).start()

    def listing(m: MountProcess) -> dict[str, int]:
        return {e.name: e.stat().st_size for e in os.scandir(m.mountpoint / "ds")}

    expected = {name: 1000 + i for i, name in enumerate(names)}
    m = mounted()
    try:
        assert listing(m) == expected
    finally:
        m.stop()
    origin.sync_log()
    assert [r.path for r in origin.requests()] == ["/ds/"]  # one listing, no request per entry

    origin.clear_log()
    m = mounted()  # within metadata_ttl: the stored listing answers, the origin is not asked
    try:
        assert listing(m) == expected
        assert (m.mountpoint / "ds" / "f007.bin").stat().st_size == 1007
    finally:
        m.stop()
    origin.sync_log()
    assert origin.requests() == []

    # Long after (a TTL of a few ms), with the origin gone: the stored listing is served rather than nothing.
    origin.stop()
    config = tmp_path / "short.toml"
    config.write_text("metadata_ttl = 0.001\n")
    m = mounted("--config", str(config))
    try:
        assert listing(m) == expected
        assert "action=serve_stored" in m.output()
    finally:
        m.stop()
    assert not is_mounted(tmp_path / "mnt")
