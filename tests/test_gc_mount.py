"""The GC under a live FUSE mount: the cache is filled past its quota while a file streams.

A real ``dffs daemon --mount`` with ``--storage-quota 24MiB`` reads 12 MiB
files from a real nginx origin. While one reader streams a file through the
mount in small reads (``dd``-like, a thread), the test reads four more files,
sampling the content files' allocated blocks after every read: usage never
passes the high watermark, the stream never fails and its bytes are right,
and a file whose pieces were evicted is fetched from the origin again on
the next read. The daemon's metrics show the evictions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import urllib.request
from pathlib import Path

from cli import run_dffs
from mounts import MountProcess
from prometheus_client.parser import text_string_to_metric_families

MiB = 1024 * 1024
QUOTA = 24 * MiB
HIGH = int(QUOTA * 0.8)
SIZE = 12 * MiB  # three 4 MiB pieces


def content_usage(data_dir: Path) -> int:
    total = 0
    for path in (data_dir / "tasks").glob("??/*/content"):
        try:
            total += path.stat().st_blocks * 512
        except FileNotFoundError:
            pass
    return total


def read_file(path: Path, chunk: int = MiB, on_chunk=lambda: None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(chunk):
            h.update(data)
            on_chunk()
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # next read reaches the daemon
    return h.hexdigest()


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        s.name + json.dumps(s.labels, sort_keys=True): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_quota_holds_while_a_stream_reads_and_evicted_pieces_come_back(tmp_path, nginx_origin, make_file):
    www = tmp_path / "www"
    www.mkdir()
    digests = {
        name: make_file(www / name, SIZE, seed=i)
        for i, name in enumerate(["stream.bin", "a.bin", "b.bin", "c.bin", "d.bin"])
    }
    origin = nginx_origin(www)
    config = tmp_path / "daemon.toml"
    config.write_text("gc_interval = 0.5\n")
    mount = MountProcess(
        tmp_path / "mnt",
        tmp_path / "data",
        "--upload-port",
        "0",
        "--rpc-port",
        "0",
        "--metrics-port",
        "0",
        "--proxy-port",
        "-1",
        "--storage-quota",
        "24MiB",
        "--config",
        str(config),
        command=("daemon",),
    )
    try:
        mount.start()
        base = mount.mountpoint / "http" / f"{origin.host}:{origin.port}"
        peak = 0

        def sample():
            nonlocal peak
            peak = max(peak, content_usage(mount.data_dir))

        stream_result: dict[str, object] = {}

        def stream():
            try:  # small reads, sampling as it goes: a reader streaming while the cache churns
                stream_result["digest"] = read_file(base / "stream.bin", 128 * 1024, sample)
            except OSError as exc:
                stream_result["error"] = exc

        reader = threading.Thread(target=stream)
        reader.start()
        try:
            for name in ["a.bin", "b.bin", "c.bin", "d.bin"]:
                assert read_file(base / name, MiB, sample) == digests[name]
                sample()
        finally:
            reader.join(120)
        assert not reader.is_alive()
        assert "error" not in stream_result, stream_result
        assert stream_result["digest"] == digests["stream.bin"]
        assert 0 < peak <= HIGH, (peak, HIGH)

        # Some of the first file's pieces were evicted (LRU): the next read fetches them again.
        tasks = json.loads(run_dffs("ctl", "--data-dir", str(mount.data_dir), "tasks", "--json").stdout)
        by_url = {Path(t["url"]).name: t for t in tasks}
        assert by_url["a.bin"]["pieces_present"] < by_url["a.bin"]["piece_count"], tasks
        origin.sync_log()
        before = origin.body_bytes("/a.bin")
        assert read_file(base / "a.bin") == digests["a.bin"]
        origin.sync_log()
        assert origin.body_bytes("/a.bin") > before
        assert content_usage(mount.data_dir) <= HIGH

        port = int(re.search(r"metrics_port=(\d+)", mount.output()).group(1))
        m = scrape(port)
        assert m["dffs_daemon_gc_evicted_pieces_total{}"] >= 3
        assert m["dffs_daemon_storage_quota_bytes{}"] == QUOTA
        assert m['dffs_daemon_fuse_operations_total{"op": "read"}'] > 0
        assert m['dffs_daemon_download_bytes_total{"source": "origin"}'] >= 6 * SIZE
        assert m['dffs_daemon_cache_requests_total{"result": "miss"}'] > 0
        assert (
            m['dffs_daemon_fuse_operation_seconds_count{"op": "read"}']
            == m['dffs_daemon_fuse_operations_total{"op": "read"}']
        )
    finally:
        code = mount.stop()
    assert code == 0, mount.output()[-3000:]
