"""kill -9 in the middle of a download, then again: only missing pieces are fetched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from cli import run_dffs, sha256_file

from dffs.storage import journal

MiB = 1024 * 1024
PIECE = 4 * MiB
SIZE = 64 * MiB  # 16 pieces


def journaled_pieces(data_dir) -> set[int]:
    """Pieces recorded in the journal, read passively (never opening the task)."""
    found = list((data_dir / "tasks").glob("*/*/pieces.journal"))
    if not found:
        return set()
    data = found[0].read_bytes()
    if len(data) < journal.HEADER.size:
        return set()
    records, _ = journal.decode_records(data[journal.HEADER.size :])
    return set(journal.replay(records))


@pytest.mark.slow
def test_kill_9_mid_download_then_resume_fetches_only_missing_pieces(tmp_path, nginx_origin, make_file):
    root = tmp_path / "www"
    root.mkdir()
    digest = make_file(root / "big.bin", SIZE, seed=3)
    origin = nginx_origin(root, limit_rate="2m")  # 8 connections x 2 MB/s: ~4 s for the file
    data = tmp_path / "data"
    out = tmp_path / "out.bin"
    cmd = [sys.executable, "-m", "dffs", "get", origin.url("/big.bin"), "-O", str(out), "--data-dir", str(data)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while len(journaled_pieces(data)) < 3:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "download made no progress"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    kept = journaled_pieces(data)
    assert 3 <= len(kept) < SIZE // PIECE, kept
    assert not out.exists()

    # Restart the origin so requests the kill cut off are logged before the count starts.
    origin.stop()
    origin.clear_log()
    origin.start()
    result = run_dffs("get", origin.url("/big.bin"), "-O", str(out), "--data-dir", str(data), timeout=60)
    assert result.returncode == 0, result.stderr
    assert sha256_file(out) == digest

    missing = sorted(set(range(SIZE // PIECE)) - kept)
    origin.sync_log()
    gets = origin.requests(method="GET")
    assert sorted(int(g.range.split("=")[1].split("-")[0]) // PIECE for g in gets) == missing
    assert origin.body_bytes(method="GET") == len(missing) * PIECE
