"""scripts/bench/snapshotter.py --smoke: the benchmark's whole path runs (tiny image, two hosts, one run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_snapshotter_benchmark_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench" / "snapshotter.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bench"] == "snapshotter" and report["hosts"] == 2
    for contender in ("dffs", "overlayfs"):
        assert report["results"][contender]["first_s"]["median"] > 0
    # dffs: every blob left the registry once, whatever the hosts read; overlayfs: once per host
    assert report["registry_egress_ratio"] <= 1.05
    assert report["results"]["overlayfs"]["registry_bytes"]["median"] >= 1.9 * report["image_bytes"]
