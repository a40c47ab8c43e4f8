"""``dffs ctl`` against live daemons: every command, and ``import`` shared through P2P with no origin.

Two real daemons and a real scheduler on loopback (distinct ports and host
names), talking real gRPC; ``dffs ctl`` and ``dffs get`` run as the CLI
users run. No origin process exists at any point: the URL names a port
nothing listens on. Metrics of both daemons and the scheduler are scraped
and parsed with prometheus_client's parser along the way.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request

import pytest
from cli import assert_one_line_error, run_dffs, sha256_file
from cluster import Daemon, Process
from prometheus_client.parser import text_string_to_metric_families

MiB = 1024 * 1024
#: Nothing listens on the discard port: an origin that does not exist.
NO_ORIGIN = "http://127.0.0.1:9/datasets/imported.bin"


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from a /metrics endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def ready_port(line_re: str, match) -> int:
    return int(re.search(line_re, match.string).group(1))


@pytest.fixture
def swarm(tmp_path):
    config = tmp_path / "daemon.toml"
    config.write_text("announce_interval = 1\nparent_wait = 1\nparent_rounds = 2\n")
    sched_config = tmp_path / "scheduler.toml"
    sched_config.write_text("metrics_port = 0\n")
    procs = []
    try:
        sched = Process(
            ["scheduler", "--listen", "127.0.0.1:0", "--config", str(sched_config)],
            tmp_path / "scheduler.log",
            r"listening on (\S+):(\d+)",
        )
        procs.append(sched)
        sched.start()
        metrics_line = sched.proc.stdout.readline()
        sched.metrics_port = int(re.search(r"metrics on \S+ \(port (\d+)\)", metrics_line).group(1))
        addr = f"127.0.0.1:{sched.match.group(2)}"
        daemons = []
        for name in ("alpha", "beta"):
            d = Daemon(
                tmp_path, name, addr, extra=("--config", str(config), "--metrics-port", "0", "--proxy-port", "-1")
            )
            procs.append(d)
            d.start()
            d.metrics_port = int(re.search(r"metrics_port=(\d+)", d.match.string).group(1))
            daemons.append(d)
        yield sched, daemons[0], daemons[1]
    finally:
        for p in reversed(procs):
            p.stop()


def ctl(daemon, *args, timeout=60):
    return run_dffs("ctl", "--data-dir", str(daemon.data_dir), *args, timeout=timeout)


def ok_json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_ctl_command_and_import_shared_with_no_origin(swarm, tmp_path, make_file):
    sched, alpha, beta = swarm
    size = 9 * MiB + 12345  # three 4 MiB pieces, the last one short
    digest = make_file(tmp_path / "local.bin", size, seed=7)

    # import: a local file becomes a complete task for the URL, announced to the scheduler.
    result = ctl(alpha, "import", str(tmp_path / "local.bin"), "--url", NO_ORIGIN)
    assert result.returncode == 0, result.stderr + alpha.output()[-3000:]
    assert "imported" in result.stdout and "3 pieces" in result.stdout
    tasks = ok_json(ctl(alpha, "tasks", "--json"))
    assert [(t["url"], t["size"], t["pieces_present"], t["piece_count"], t["imported"]) for t in tasks] == [
        (NO_ORIGIN, size, 3, 3, True)
    ]
    task_id = tasks[0]["task_id"]
    table = ctl(alpha, "tasks")
    assert table.returncode == 0 and task_id[:16] in table.stdout and "3/3" in table.stdout
    assert "LAST ACCESS" in table.stdout
    stat = ok_json(ctl(alpha, "stat", NO_ORIGIN, "--json"))
    assert stat["task_id"] == task_id and stat["state"] == "Succeeded" and stat["last_access"] > 0
    assert ok_json(ctl(alpha, "stat", task_id, "--json"))["url"] == NO_ORIGIN

    # Another host reads it through P2P: the origin does not exist, the scheduler knows the size.
    out = tmp_path / "beta.out"
    got = run_dffs("get", NO_ORIGIN, "-O", str(out), "--data-dir", str(beta.data_dir), "--timeout", "60")
    assert got.returncode == 0, got.stderr + beta.output()[-4000:]
    assert sha256_file(out) == digest
    done = re.search(r"event=download_done bytes=(\d+) origin_bytes=(\d+) peer_bytes=(\d+)", beta.output())
    assert done and done.groups() == (str(size), "0", str(size)), beta.output()[-3000:]
    beta_stat = ok_json(ctl(beta, "stat", NO_ORIGIN, "--json"))
    assert beta_stat["pieces_present"] == 3 and not beta_stat["imported"]

    # Metrics moved as expected: alpha uploaded the task, beta received it from a peer.
    a, b, s = scrape(alpha.metrics_port), scrape(beta.metrics_port), scrape(sched.metrics_port)
    assert metric(a, "dffs_daemon_upload_bytes_total") == size
    assert metric(b, "dffs_daemon_download_bytes_total", source="peer") == size
    assert metric(b, "dffs_daemon_download_bytes_total", source="origin") == 0
    assert metric(b, "dffs_daemon_piece_download_seconds_count", source="peer") == 3
    assert metric(s, "dffs_scheduler_hosts") == 2
    assert metric(s, "dffs_scheduler_tasks") == 1
    assert metric(s, "dffs_scheduler_finished_tasks_total", outcome="registered") >= 1  # the import
    assert metric(s, "dffs_scheduler_decisions_total", decision="parents") >= 1  # beta sent to alpha
    assert metric(s, "dffs_scheduler_schedule_seconds_count") >= 1  # beta's register (the import needs none)
    health = urllib.request.urlopen(f"http://127.0.0.1:{alpha.metrics_port}/healthy", timeout=10)
    assert health.status == 200

    # export, by task ID and by URL (local: no download, no origin).
    exported = tmp_path / "exported.bin"
    result = ctl(beta, "export", task_id, "-O", str(exported))
    assert result.returncode == 0, result.stderr
    assert sha256_file(exported) == digest
    exported.unlink()
    assert ok_json(ctl(alpha, "export", NO_ORIGIN, "-O", str(exported), "--local-only", "--json"))["output"] == str(
        exported
    )
    assert sha256_file(exported) == digest

    # gc: nothing to evict without a quota, but the pass runs and reports usage.
    gc = ok_json(ctl(alpha, "gc", "--json"))
    assert gc["evicted_tasks"] == 0 and gc["quota_bytes"] == 0 and gc["used_bytes"] >= size
    assert "evicted 0 tasks" in ctl(alpha, "gc").stdout

    # rm: gone from the host and from the scheduler's view of alpha.
    result = ctl(alpha, "rm", NO_ORIGIN)
    assert result.returncode == 0 and task_id in result.stdout, result.stderr
    assert ok_json(ctl(alpha, "tasks", "--json")) == []
    assert "no tasks" in ctl(alpha, "tasks").stdout
    assert_one_line_error(ctl(alpha, "stat", task_id), 1, "not on this host")
    assert_one_line_error(ctl(alpha, "rm", task_id), 1, "not on this host")


def test_ctl_errors_are_one_line(tmp_path):
    no_daemon = tmp_path / "nothing"
    no_daemon.mkdir()
    assert_one_line_error(run_dffs("ctl", "--data-dir", str(no_daemon), "tasks"), 1, "no daemon is running")
    assert_one_line_error(run_dffs("ctl", "--socket", str(tmp_path / "x.sock"), "gc"), 1, "no daemon")
    assert_one_line_error(run_dffs("ctl", "stat", "not-a-task"), 2, "neither a task ID")
    assert_one_line_error(
        run_dffs("ctl", "import", str(tmp_path / "missing.bin"), "--url", "http://h/x"), 2, "no such file"
    )
    (tmp_path / "f").write_bytes(b"x")
    assert_one_line_error(run_dffs("ctl", "import", str(tmp_path / "f"), "--url", "nourl"), 2, "not a URL")
    assert_one_line_error(
        run_dffs("ctl", "export", "http://h/x", "-O", str(tmp_path / "no/dir/out")), 2, "not a directory"
    )
    assert_one_line_error(run_dffs("ctl", "frobnicate"), 2)
    # A stale socket file with no daemon behind it.
    stale = tmp_path / "stale"
    stale.mkdir()
    import socket as socket_module

    with socket_module.socket(socket_module.AF_UNIX) as s:
        s.bind(str(stale / "dffs.sock"))
    assert_one_line_error(run_dffs("ctl", "--data-dir", str(stale), "tasks"), 1, "no daemon is answering")


def test_import_on_one_host_then_another_reads_it_with_no_origin(tmp_path, make_file):
    """Hosts as network namespaces: a file imported on host a is fetched by host b through P2P;
    the URL's origin address does not exist on the network at all."""
    from netns import Network

    digest = make_file(tmp_path / "local.bin", 9 * MiB + 11, seed=71)
    config = tmp_path / "daemon.toml"
    config.write_text("announce_interval = 1\nparent_wait = 1\nparent_rounds = 2\n")
    with Network(subnet="10.81.0") as net:
        hosts = {name: net.add_host(name) for name in ("sched", "a", "b")}
        url = "http://10.81.0.250:8080/imported/local.bin"  # no such host
        procs = []
        try:
            sched = Process(
                ["scheduler", "--listen", f"{hosts['sched'].ip}:8002"],
                tmp_path / "ns-scheduler.log",
                r"listening on (\S+):(\d+)",
                prefix=hosts["sched"].command([]),
            )
            procs.append(sched.start())
            daemons = {}
            for name in ("a", "b"):
                daemon = Daemon(
                    tmp_path,
                    f"ns-{name}",
                    f"{hosts['sched'].ip}:8002",
                    ip=hosts[name].ip,
                    prefix=hosts[name].command([]),
                    extra=("--config", str(config), "--metrics-port", "-1", "--proxy-port", "-1"),
                )
                procs.append(daemon.start())
                daemons[name] = daemon
            imported = subprocess.run(
                hosts["a"].command(
                    [
                        sys.executable,
                        "-m",
                        "dffs",
                        "ctl",
                        "--data-dir",
                        str(daemons["a"].data_dir),
                        "import",
                        str(tmp_path / "local.bin"),
                        "--url",
                        url,
                    ]
                ),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert imported.returncode == 0, (imported.stderr, daemons["a"].output()[-2000:])
            out = tmp_path / "b.out"
            got = subprocess.run(
                hosts["b"].command(
                    [sys.executable, "-m", "dffs", "get", url, "-O", str(out), "--data-dir", str(daemons["b"].data_dir)]
                ),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert got.returncode == 0, (got.stderr, daemons["b"].output()[-3000:])
            assert sha256_file(out) == digest
        finally:
            for proc in reversed(procs):
                proc.stop()
