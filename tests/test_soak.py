"""The soak (scripts/soak.py) for two minutes, and its pure parts.

The run is real: nginx, docker-registry, a scheduler, a seed and three daemons with FUSE mounts,
each on its own network namespace host, under mount readers, `dffs get`, image pulls through the
registry mirror and a GC at its quota, while the scheduler and one parent are killed and restarted
about every 30 s. Figures for the hour are in docs/reliability.md; here only their correctness is
asserted: no wrong byte, no error outside a deliberate kill, no hang, every process alive at the end.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_bench_smoke import _leftovers

SOAK = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"
spec = importlib.util.spec_from_file_location("soak", SOAK)
soak = importlib.util.module_from_spec(spec)
spec.loader.exec_module(soak)


def test_slope_is_least_squares_per_minute():
    assert soak.slope_per_minute([(0, 10), (60, 20), (120, 30)]) == pytest.approx(10.0)
    assert soak.slope_per_minute([(0, 5), (30, 5), (90, 5), (600, 5)]) == 0
    # noise around a line: the fit, not the last minus the first
    assert soak.slope_per_minute([(0, 0), (60, 3), (120, 1), (180, 4)]) == pytest.approx(1.0)
    assert soak.slope_per_minute([(0, 1), (60, 2)]) is None  # too few points to call it a trend
    assert soak.slope_per_minute([(5, 1), (5, 2), (5, 3)]) is None


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert soak.percentile(values, 0.99) == 99
    assert soak.percentile(values, 0.5) == 50
    assert soak.percentile([7.0], 0.99) == 7
    assert soak.percentile([], 0.99) is None


def test_only_errors_on_the_killed_member_while_it_was_down_are_excused():
    windows = [soak.Window("p3", 100.0, 110.0)]
    assert soak.excused("p3", 95.0, 101.0, windows, grace=5)  # in flight when it was killed
    assert soak.excused("p3", 112.0, 113.0, windows, grace=5)  # just after it came back
    assert not soak.excused("p3", 120.0, 121.0, windows, grace=5)  # long after
    assert not soak.excused("p1", 101.0, 102.0, windows, grace=5)  # another daemon: no excuse
    assert not soak.excused("p3", 80.0, 90.0, windows, grace=5)  # before


def test_report_fails_on_any_wrong_byte_error_hang_or_death():
    good = {"wrong_bytes": 0, "errors_unexplained": {}, "hangs": 0, "alive_at_end": {"p1": True}, "bytes_checked": 9}
    assert soak.failed(good) == []
    assert soak.failed({**good, "wrong_bytes": 1})
    assert soak.failed({**good, "errors_unexplained": {"seq:EIO": 1}})
    assert soak.failed({**good, "hangs": 1})
    assert soak.failed({**good, "alive_at_end": {"p1": False}})
    assert soak.failed({**good, "bytes_checked": 0})


@pytest.fixture
def workdir():
    """A short path: daemons' Unix sockets go below it (108 bytes at most)."""
    path = Path(tempfile.mkdtemp(prefix="dffs-soak."))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_minute_soak(workdir):
    argv = [sys.executable, str(SOAK), "--duration", "120", "--smoke", "--out", str(workdir), "--subnet", "10.92.0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # a hang guard, not a speed limit: set-up, 120 s of load, and the workers' own hang limit
        stdout, stderr = proc.communicate(timeout=720)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the soak stops its load, reports and cleans up
        try:
            stdout, stderr = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"the soak did not finish:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    finally:
        left = _leftovers(workdir, proc.pid)
    assert stdout.strip(), stderr[-5000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    summary = stdout[-4000:] + "\n" + stderr[-3000:]
    assert report["wrong_bytes"] == 0, summary
    assert report["errors_unexplained"] == {}, summary
    assert report["hangs"] == 0, summary
    assert all(report["alive_at_end"].values()), summary
    assert not left, f"the soak left behind: {left}"
    assert proc.returncode == 0, summary
    # the load and the faults really happened
    assert report["duration_s"] >= 120
    assert all(report["operations"].get(kind, 0) > 0 for kind in ("seq", "random", "get", "pull")), summary
    assert report["bytes_checked"] > 0 and report["read_latency_ms"]["p99"] is not None, summary
    assert report["faults"].get("scheduler_killed_and_restarted", 0) >= 2, summary
    assert report["faults"].get("p3_killed_and_restarted", 0) >= 2, summary
    assert report["gc"].get("evict_pieces_events", 0) + report["gc"].get("evict_task_events", 0) > 0, summary
    names = {p["name"] for p in report["processes"]}
    assert names == {"scheduler", "seed", "p1", "p2", "p3"}, report["processes"]
    assert all(p["samples"] > 0 and p["fds_last"] > 0 for p in report["processes"])
