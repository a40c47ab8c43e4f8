"""The GC under a live FUSE mount: the cache is filled past its quota while a file streams.

A real ``dffs daemon --mount`` with ``--storage-quota 24MiB`` reads 12 MiB
files from a real, rate-limited nginx origin. One reader streams a cached file
through the mount in small reads (a thread) and is held at a known point, its
file open, while the test reads other files through the mount: the GC evicts the
stream's pieces (least recently used), and when the stream goes on it must get
them fetched again, its bytes right. Usage, sampled after every read, never
passes the high watermark; a file whose pieces were evicted is fetched from the
origin again on the next read; the daemon's metrics show the evictions.
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
PIECE = 4 * MiB
#: Per connection: pieces take a while, so the stream's fetches overlap the other files'.
ORIGIN_RATE = "16m"


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


def tasks(data_dir: Path) -> dict[str, dict]:
    """The daemon's tasks by file name (``dffs ctl tasks --json``)."""
    result = run_dffs("ctl", "--data-dir", str(data_dir), "tasks", "--json")
    assert result.returncode == 0, result.stderr
    return {Path(t["url"]).name: t for t in json.loads(result.stdout)}


def spans(entries) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in e.range.removeprefix("bytes=").split("-")) for e in entries if e.range]


def test_quota_holds_while_a_stream_reads_and_evicted_pieces_come_back(tmp_path, nginx_origin, make_file):
    www = tmp_path / "www"
    www.mkdir()
    digests = {
        name: make_file(www / name, SIZE, seed=i)
        for i, name in enumerate(["stream.bin", "a.bin", "b.bin", "c.bin", "d.bin"])
    }
    origin = nginx_origin(www, limit_rate=ORIGIN_RATE)
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

        # The stream's file is cached whole first, so what it fetches later was evicted meanwhile.
        assert read_file(base / "stream.bin", MiB, sample) == digests["stream.bin"]
        origin.sync_log()
        cached = spans(origin.requests("/stream.bin", "GET"))
        assert sum(b - a + 1 for a, b in cached) == SIZE, cached
        stream_task = tasks(mount.data_dir)["stream.bin"]
        assert stream_task["pieces_present"] == 3

        paused, resume = threading.Event(), threading.Event()
        stream_result: dict[str, object] = {}

        def stream():
            """Small reads on one open file, held after the first MiB until the test resumes it."""
            h = hashlib.sha256()
            try:
                with open(base / "stream.bin", "rb") as f:
                    while data := f.read(128 * 1024):
                        h.update(data)
                        sample()
                        if f.tell() == MiB:
                            paused.set()
                            if not resume.wait(120):
                                raise TimeoutError("never resumed")
                stream_result["digest"] = h.hexdigest()
            except OSError as exc:
                stream_result["error"] = exc
            finally:
                paused.set()

        reader = threading.Thread(target=stream)
        reader.start()
        try:
            assert paused.wait(60) and reader.is_alive(), stream_result
            # Two more files while the stream is held open: 36 MiB through a 24 MiB quota.
            for name in ["a.bin", "b.bin"]:
                assert read_file(base / name, MiB, sample) == digests[name]
                sample()
            held = tasks(mount.data_dir)["stream.bin"]
            assert held["pieces_present"] < held["piece_count"], held  # the open stream lost pieces
            evicted = f"task={stream_task['task_id']} event=gc_evict_pieces"
            evictions = [line for line in mount.output().splitlines() if evicted in line]
            assert evictions, "no gc_evict_pieces event for the stream's task"
            origin.sync_log()
            before_resume = len(origin.requests("/stream.bin", "GET"))
            # The stream goes on while two more files churn the cache.
            resume.set()
            for name in ["c.bin", "d.bin"]:
                assert read_file(base / name, MiB, sample) == digests[name]
                sample()
        finally:
            resume.set()
            reader.join(120)
        assert not reader.is_alive()
        assert "error" not in stream_result, stream_result
        assert stream_result["digest"] == digests["stream.bin"]
        assert 0 < peak <= HIGH, (peak, HIGH)
        # Fetched again while the stream went on: GETs logged after the hold, for bytes it had cached.
        origin.sync_log()
        again = spans(origin.requests("/stream.bin", "GET")[before_resume:])
        assert again and all(any(a <= x <= b for a, b in cached) for x, _ in again), (cached, again)
        assert sum(b - a + 1 for a, b in again) >= PIECE, again  # at least one whole piece came back

        # Some of the first file's pieces were evicted (LRU): the next read fetches them again.
        by_url = tasks(mount.data_dir)
        assert by_url["a.bin"]["pieces_present"] < by_url["a.bin"]["piece_count"], by_url
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
        # Five files, plus at least a piece each of the stream and of a.bin again.
        assert m['dffs_daemon_download_bytes_total{"source": "origin"}'] >= 5 * SIZE + 2 * PIECE
        assert m['dffs_daemon_cache_requests_total{"result": "miss"}'] > 0
        assert (
            m['dffs_daemon_fuse_operation_seconds_count{"op": "read"}']
            == m['dffs_daemon_fuse_operations_total{"op": "read"}']
        )
    finally:
        code = mount.stop()
    assert code == 0, mount.output()[-3000:]
