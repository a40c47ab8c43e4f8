"""The scheduler benchmark and the swarm simulator run end to end at tiny sizes (--smoke).

Real parts: the benchmark's load scenario starts a real ``dffs scheduler``
process and load-generator processes on loopback; the simulator drives the
real SchedulerCore and the daemon's piece-choice functions.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(*argv: str, timeout: float = 240) -> tuple[str, dict]:
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return proc.stdout, json.loads(lines[-1])


def test_scheduler_benchmark_smoke_runs_every_scenario_before_and_after():
    # The baseline is this same tree: the alternating before/after path runs, the figures need not differ.
    out, report = run_script("scripts/bench/scheduler.py", "--smoke", "--baseline", str(REPO))
    results = report["results"]
    assert set(results) == {"cluster-smoke", "hot-finished-smoke", "hot-graph-smoke", "flash-smoke", "load-smoke"}
    for name, by_tree in results.items():
        assert set(by_tree) == {"before", "after"}, name
    for name in ("cluster-smoke", "hot-finished-smoke", "hot-graph-smoke"):
        after = results[name]["after"]
        assert after["decisions_per_s"]["median"] > 0 and after["p99_ms"]["median"] >= after["p50_ms"]["median"]
        assert after["reports_per_s"]["median"] > 0 and after["rss_mib"]["median"] > 0
    flash = results["flash-smoke"]["after"]
    assert flash["answered"]["median"] == 120 and flash["cpu_s"]["median"] > 0
    load = results["load-smoke"]["after"]
    assert load["answered"]["median"] > 0 and load["answer_p99_ms"]["median"] >= load["answer_p50_ms"]["median"]
    assert "decisions/s" in out and "answer p99 ms" in out


def test_swarm_simulator_smoke_finishes_every_host_within_physics():
    out, report = run_script("scripts/sim/swarm.py", "--smoke")
    r = report["result"]
    assert r["hosts"] == 12 and math.isfinite(r["last_host_s"])
    assert r["last_host_s"] >= r["physical_bound_s"] > 0  # no swarm beats its links
    assert r["origin_copies"] >= 1.0  # the bytes entered the swarm from the origin at least once
    assert r["scheduler_cpu_s"] > 0 and r["decisions"] >= r["hosts"]
    assert "physical bound" in out and "origin egress" in out
