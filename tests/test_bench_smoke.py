"""The harness every benchmark in scripts/bench/ shares: run order, summary, ratios, the JSON line."""

from __future__ import annotations

import io
import json
import signal
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench"
sys.path.insert(0, str(BENCH))
import harness  # noqa: E402

# -- the harness itself (pure parts) ---------------------------------------


def test_order_alternates_dffs_first_on_odd_runs():
    assert harness.run_order(["dffs", "curl"], 1) == ["dffs", "curl"]
    assert harness.run_order(["dffs", "curl"], 2) == ["curl", "dffs"]
    assert harness.run_order(["dffs", "curl"], 3) == ["dffs", "curl"]
    # More contenders: reversed on even runs, so every pair swaps every run.
    assert harness.run_order(["a", "b", "c"], 2) == ["c", "b", "a"]
    with pytest.raises(ValueError):
        harness.run_order(["a"], 0)


def make_bench(runs: int = 3, out=None) -> harness.Bench:
    return harness.Bench(
        "demo",
        contenders=["dffs", "rival"],
        figures=[harness.Figure("speed", "GB/s"), harness.Figure("latency", "ms", lower_is_better=True)],
        comparisons=[harness.Comparison("dffs", "rival")],
        params={"size": 1},
        runs=runs,
        out=out,
    )


def test_summary_holds_median_min_max_n_and_oriented_ratios():
    bench = make_bench(out=io.StringIO())
    figures = {
        "dffs": [(2.0, 1.0), (4.0, 3.0), (3.0, 2.0)],
        "rival": [(1.0, 4.0), (1.0, 6.0), (2.0, 2.0)],
    }
    seen = []
    for run, who in bench.schedule():
        seen.append((run, who))
        speed, latency = figures[who][run - 1]
        bench.record(run, who, {"speed": speed, "latency": latency})
    assert seen == [(1, "dffs"), (1, "rival"), (2, "rival"), (2, "dffs"), (3, "dffs"), (3, "rival")]
    summary = bench.summary()
    assert summary["orders"] == [["dffs", "rival"], ["rival", "dffs"], ["dffs", "rival"]]
    speed = summary["figures"]["speed"]["contenders"]["dffs"]
    assert (speed["median"], speed["min"], speed["max"], speed["n"]) == (3.0, 2.0, 4.0, 3)
    assert speed["values"] == [2.0, 4.0, 3.0]  # in run order
    ratios = {r["figure"]: r for r in summary["ratios"]}
    assert ratios["speed"]["formula"] == "dffs/rival" and ratios["speed"]["of_medians"] == 3.0
    # Lower is better: the ratio is rival/dffs, so > 1 still means dffs did better.
    assert ratios["latency"]["formula"] == "rival/dffs" and ratios["latency"]["of_medians"] == 2.0
    assert (ratios["latency"]["same_run_min"], ratios["latency"]["same_run_max"]) == (1.0, 4.0)
    assert summary["params"] == {"size": 1} and summary["runs"] == 3


def test_report_ends_with_the_json_line():
    out = io.StringIO()
    bench = make_bench(runs=1, out=out)
    for run, who in bench.schedule():
        bench.record(run, who, {"speed": 1.0, "latency": 0.0 if who == "dffs" else 1.0})
    bench.report()
    last = out.getvalue().splitlines()[-1]
    data = json.loads(last)
    assert data["bench"] == "demo"
    assert {r["figure"]: r["of_medians"] for r in data["ratios"]} == {"speed": 1.0, "latency": None}  # a zero


def test_bad_records_are_refused_by_name():
    bench = make_bench(runs=1, out=io.StringIO())
    with pytest.raises(ValueError, match="unknown figure 'sped'"):
        bench.record(1, "dffs", {"sped": 1.0})
    with pytest.raises(ValueError, match="unknown contender"):
        bench.record(1, "nobody", {"speed": 1.0})
    bench.record(1, "dffs", {"speed": 1.0})
    with pytest.raises(ValueError, match="already has"):
        bench.record(1, "dffs", {"speed": 2.0})
    with pytest.raises(ValueError, match="at least 1"):
        make_bench(runs=0)


def test_smoke_defaults_yield_to_explicit_flags():
    p = harness.parser("demo\n")
    p.add_argument("--size-mib", type=int)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert harness.parse(p, ["--smoke"], size_mib=(1024, 8)).size_mib == 8
        assert harness.parse(p, [], size_mib=(1024, 8)).size_mib == 1024
        args = harness.parse(p, ["--smoke", "--size-mib", "3"], size_mib=(1024, 8))
        assert (args.size_mib, args.runs) == (3, 3)
        with pytest.raises(SystemExit):
            harness.parse(p, ["--runs", "0"])
    finally:
        signal.signal(signal.SIGTERM, previous)  # parse() installs the benchmarks' handler
