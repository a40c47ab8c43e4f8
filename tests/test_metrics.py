"""Metrics endpoints: the pure request handling, a live daemon and a live manager, scraped and parsed.

(The daemon's P2P and GC series and the scheduler's are checked where they
move: tests/test_ctl.py and tests/test_gc_mount.py.)
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

from cli import run_dffs, sha256_file
from cluster import Process
from mounts import MountProcess
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

MiB = 1024 * 1024


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_respond_paths_and_methods():
    from dffs.metrics.server import respond

    registry = CollectorRegistry()
    Counter("things", "Things.", registry=registry).inc(3)
    ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", registry, lambda: True).decode()
    assert ok.startswith("HTTP/1.1 200") and "things_total 3.0" in ok
    assert respond(b"GET /healthy HTTP/1.1\r\n\r\n", registry, lambda: True).startswith(b"HTTP/1.1 200")
    assert respond(b"GET /healthy HTTP/1.1\r\n\r\n", registry, lambda: False).startswith(b"HTTP/1.1 503")
    assert respond(b"GET /nope HTTP/1.1\r\n\r\n", registry, lambda: True).startswith(b"HTTP/1.1 404")
    assert respond(b"POST /metrics HTTP/1.1\r\n\r\n", registry, lambda: True).startswith(b"HTTP/1.1 405")
    assert respond(b"garbage\r\n\r\n", registry, lambda: True).startswith(b"HTTP/1.1 400")
    head = respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", registry, lambda: True)
    assert head.endswith(b"\r\n\r\n") and b"things_total" not in head


def test_daemon_metrics_move_with_downloads(tmp_path, nginx_origin, make_file):
    """Origin bytes, then local bytes on a second read of the same file through the daemon."""
    www = tmp_path / "www"
    www.mkdir()
    digest = make_file(www / "f.bin", 6 * MiB, seed=3)
    origin = nginx_origin(www)
    daemon = MountProcess(
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
        command=("daemon",),
    )
    try:
        daemon.start()
        port = int(re.search(r"metrics_port=(\d+)", daemon.output()).group(1))
        assert get(f"http://127.0.0.1:{port}/healthy")[0] == 200
        before = samples(get(f"http://127.0.0.1:{port}/metrics")[1])
        out = tmp_path / "out.bin"
        for _ in range(2):
            result = run_dffs("get", origin.url("/f.bin"), "-O", str(out), "--data-dir", str(daemon.data_dir))
            assert result.returncode == 0, result.stderr
            assert sha256_file(out) == digest
            out.unlink()
        after = samples(get(f"http://127.0.0.1:{port}/metrics")[1])

        def delta(name, **labels):
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0) - before.get(key, 0)

        assert delta("dffs_daemon_download_bytes_total", source="origin") == 6 * MiB
        assert delta("dffs_daemon_download_bytes_total", source="local") == 6 * MiB  # the second get
        assert delta("dffs_daemon_piece_download_seconds_count", source="origin") == 2  # two 4 MiB pieces
        assert after[("dffs_daemon_storage_quota_bytes", ())] == 0
        assert after[("dffs_daemon_gc_runs_total", ())] >= 1
    finally:
        daemon.stop()


def test_manager_metrics_and_health(tmp_path):
    manager = Process(
        [
            "manager",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--db",
            f"sqlite:///{tmp_path / 'm.db'}",
        ],
        tmp_path / "manager.log",
        r"dffs manager: listening on",
    )
    try:
        manager.start()
        http_line = manager.proc.stdout.readline()  # printed right after the first line
        http_port = re.search(r"[(]port (\d+)[)]", http_line).group(1)
        base = f"http://127.0.0.1:{http_port}"
        assert get(f"{base}/healthy")[0] == 200
        status, text = get(f"{base}/metrics")
        assert status == 200
        jobs = {labels: v for (name, labels), v in samples(text).items() if name == "dffs_manager_jobs"}
        assert sum(jobs.values()) == 0 and len(jobs) == 4
        request = urllib.request.Request(
            f"{base}/api/v1/jobs",
            method="POST",
            data=json.dumps({"type": "preheat", "urls": ["http://127.0.0.1:9/x.bin"], "scope": "seed"}).encode(),
            headers={"Authorization": f"Bearer {manager.api_token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 201
        jobs = {
            labels: v for (name, labels), v in samples(get(f"{base}/metrics")[1]).items() if name == "dffs_manager_jobs"
        }
        assert sum(jobs.values()) == 1
    finally:
        manager.stop()
