"""The benchmarks in scripts/bench/ keep working: each runs in --smoke mode, and the harness they share
is checked on its own.

The smoke runs are real (nginx, FUSE mounts, rclone, network namespaces with tc, containerd, a registry,
the piece upload server and client), at tiny sizes; their figures mean nothing and are not checked, only
that each script finishes, prints a JSON line of the harness's shape covering every contender in
alternating order, and leaves no process, mount or namespace behind.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench"
sys.path.insert(0, str(BENCH))
import harness  # noqa: E402
from mounts import force_unmount  # noqa: E402

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


# -- every script, for real, at tiny sizes ---------------------------------

FIGURES = {
    "source_throughput": {"throughput"},
    "mount": {
        "cold sequential",
        "mount CPU per cold GiB",
        "warm sequential",
        "warm page-cache folio",
        "remount, page cache dropped",
        "sequential origin traffic",
        "random 4 KiB median",
        "random 4 KiB p99",
        "random origin traffic",
        "stream",
        "stream RSS peak",
        "stream RSS at end",
    },
    "p2p": {"time to the last host", "origin egress"},
    "proxy": {"time to the last pull", "registry egress"},
    # Parts a, c and d (its default); part b's namespaces are the p2p benchmark's business here.
    "dataset": {
        f"{label} {what}"
        for label in ("112KiB", "16KiB")
        for what in ("cold", "warm", "first batch", "origin requests/file", "listing requests", "mount CPU/file")
    }
    | {"parquet origin MB", "listing seconds", "listing requests", "S3 listing seconds", "S3 listing requests"},
    "pieces": {"throughput", "client CPU", "server CPU", "piece request", "connections"},
}
CONTENDERS = {
    "source_throughput": {
        "dffs get (CLI, cold)",
        "curl -> file",
        "aria2c -x8 -> file",
        "dffs 8 ranged -> storage",
        "dffs stream -> storage",
        "dffs stream -> tmpfs",
        "dffs get (CLI, cached)",
        "dffs http -> buffer",
        "h11 only -> buffer",
        "curl -> /dev/null",
    },
    "mount": {"dffs", "rclone", "curl", "local file", "local file, 4 KiB folios"},
    "p2p": {"dffs", "dffs insecure", "curl"},
    "proxy": {"mirror", "direct"},
    "dataset": {"dffs", "rclone"},
    "pieces": {"signed", "insecure", "tls"},
}
RUNS = 2  # two runs: the second one must be in the reverse order


def _leftovers(workdir: Path, pid: int) -> list[str]:
    """Processes, mounts and namespaces a benchmark run (process ``pid``) left behind; removes them."""
    found = []
    needle = str(workdir).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmdline:
                command = cmdline.replace(b"\0", b" ").decode(errors="replace")
                found.append(f"process {entry.name}: {command[:200]}")
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[1].startswith(str(workdir))]
    for mountpoint in sorted(mounts, key=len, reverse=True):
        found.append(f"mount {mountpoint}")
        force_unmount(Path(mountpoint))
    tag = f"d{pid % 100000}x"  # tests/netns.py names a Network's namespaces after its process
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for name in names:
        if name.startswith(tag):
            found.append(f"namespace {name}")
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return found


@pytest.fixture
def workdir():
    """A short path: daemons' Unix sockets go below it (108 bytes at most), and pytest's tmp_path is long."""
    path = Path(tempfile.mkdtemp(prefix="dffs-bs."))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("bench", sorted(FIGURES))
def test_benchmark_smoke_run(bench, workdir):
    argv = [sys.executable, str(BENCH / f"{bench}.py"), "--smoke", "--runs", str(RUNS), "--workdir", str(workdir)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)  # a hang guard, not a speed limit
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the harness turns it into SystemExit: the script cleans up
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"{bench} --smoke did not finish:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    finally:
        left = _leftovers(workdir, proc.pid)
    assert proc.returncode == 0, f"{bench} --smoke exited with {proc.returncode}:\n{stdout[-3000:]}\n{stderr[-5000:]}"
    assert not left, f"{bench} left behind: {left}"

    data = json.loads(stdout.strip().splitlines()[-1])
    assert data["bench"] == bench and data["version"] == harness.JSON_VERSION
    assert data["runs"] == RUNS and data["params"]["smoke"] is True
    assert len(data["orders"]) == RUNS and data["orders"][1] == data["orders"][0][::-1]
    assert set(data["orders"][0]) == CONTENDERS[bench]
    assert set(data["figures"]) == FIGURES[bench]
    covered = set()
    for name, figure in data["figures"].items():
        assert figure["unit"] and figure["better"] in ("higher", "lower"), name
        for who, s in figure["contenders"].items():
            covered.add(who)
            assert s["n"] == RUNS and len(s["values"]) == RUNS, (name, who)
            assert s["min"] <= s["median"] <= s["max"], (name, who)
    assert covered == CONTENDERS[bench]
    assert data["ratios"], "no ratio against a competitor"
    for r in data["ratios"]:
        assert {"figure", "subject", "baseline", "formula", "of_medians", "same_run_min", "same_run_max", "n"} <= set(r)
        assert r["n"] == RUNS
