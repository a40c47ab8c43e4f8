"""The manager in a real cluster: hosts as network namespaces, every server bound to its address.

Daemons and the scheduler are given only the manager's address: the scheduler
registers and keeps alive, daemons get their schedulers from the manager, a
seed registers as a seed peer. A preheat job puts a file on the seed; normal
peers then read it (``dffs get`` and a mount) with no byte from the origin.
When the scheduler stops, its keepalive ends and daemons drop it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli import sha256_file
from cluster import Daemon, Manager, Process
from members import signed_piece_header
from netns import Network
from test_p2p_cluster import wait_for

MiB = 1024 * 1024
DAEMON_CONFIG = "announce_interval = 1\nmanager_refresh_interval = 0.5\nparent_wait = 2\n"
SCHEDULER_CONFIG = "manager_refresh_interval = 0.5\n"


@pytest.fixture
def net():
    with Network(subnet="10.78.0") as network:
        yield network


def ctl(net, host, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        host.command([sys.executable, "-m", "dffs", "ctl", *args]), capture_output=True, text=True, timeout=timeout
    )


def api(net, host, manager: Manager, method: str, path: str, body: dict | None = None) -> dict:
    """The manager's JSON API, with curl from inside a namespace that can reach it."""
    argv = ["curl", "-sS", "-X", method, "-H", f"Authorization: Bearer {manager.api_token}", manager.http_url + path]
    if body is not None:
        argv += ["-d", json.dumps(body)]
    return json.loads(net.check_output(host, argv))


#: Bytes/s set as the cluster's upload_limit: a 4 MiB piece then takes about 2 s.
UPLOAD_LIMIT = 2_000_000


def ctl_tasks(daemon: Daemon) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "dffs", "ctl", "--data-dir", str(daemon.data_dir), "tasks", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def fetch_piece(net, hosts, daemons, name: str, task_id: str) -> float:
    """Piece 0 of ``task_id`` from daemon ``name``'s upload port, with curl on another host;
    returns the bytes per second curl measured."""
    client = hosts["p2" if name != "p2" else "p1"]
    upload_port = daemons[name].match.group(1)
    url = f"http://{hosts[name].ip}:{upload_port}/pieces/{task_id}/0"
    out = net.check_output(
        client,
        [
            "curl",
            "-sS",
            "-H",
            f"Authorization: {signed_piece_header(task_id, 0)}",  # the data plane serves members only
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{time_total}",
            url,
        ],
    )
    code, size, seconds = out.split()
    assert (code, int(size)) == ("200", 4 * MiB), out
    return int(size) / float(seconds)


def test_daemons_find_schedulers_through_the_manager_and_read_a_preheated_file(net, tmp_path, nginx_origin, make_file):
    hosts = {name: net.add_host(name) for name in ("manager", "sched", "origin", "seed", "p1", "p2")}
    (tmp_path / "www").mkdir()
    size = 20 * MiB + 3
    digest = make_file(tmp_path / "www" / "pre.bin", size, seed=51)
    origin = nginx_origin(tmp_path / "www", host=hosts["origin"].ip, port=8080, netns=hosts["origin"].netns)
    url = f"http://{origin.host}:8080/pre.bin"
    (tmp_path / "scheduler.toml").write_text(SCHEDULER_CONFIG)
    (tmp_path / "daemon.toml").write_text(DAEMON_CONFIG)
    processes: list[Process] = []

    def started(process: Process) -> Process:
        processes.append(process)
        net.processes.append(process.proc)
        return process

    try:
        manager = Manager(tmp_path, hosts["manager"].ip, prefix=hosts["manager"].command([]))
        started(manager.start())
        sched = Process(
            [
                "scheduler",
                "--listen",
                f"{hosts['sched'].ip}:8002",
                "--manager",
                manager.grpc_address,
                "--config",
                str(tmp_path / "scheduler.toml"),
            ],
            tmp_path / "scheduler.log",
            r"listening on (\S+):(\d+)",
            prefix=hosts["sched"].command([]),
        )
        started(sched.start())
        wait_for(
            lambda: api(net, hosts["p1"], manager, "GET", "/schedulers")["schedulers"], what="scheduler registered"
        )
        daemons = {}
        for name in ("seed", "p1", "p2"):
            daemon = Daemon(
                tmp_path,
                name,
                None,
                manager=manager.grpc_address,
                ip=hosts[name].ip,
                seed=name == "seed",
                mount=name == "p1",
                prefix=hosts[name].command([]),
                extra=("--config", str(tmp_path / "daemon.toml")),
            )
            daemons[name] = started(daemon.start())
        for daemon in daemons.values():  # no --scheduler anywhere: the manager handed it out
            assert f"schedulers_from_manager schedulers={hosts['sched'].ip}:8002" in daemon.output()
        seeds = api(net, hosts["p1"], manager, "GET", "/seed-peers")["seed_peers"]
        assert [(s["hostname"], s["ip"], s["state"]) for s in seeds] == [("seed", hosts["seed"].ip, "active")]

        # Preheat through the CLI; the job is done when the seed has the file.
        done = ctl(net, hosts["p2"], "--manager", manager.grpc_address, "preheat", url, "--wait", "--timeout", "60")
        assert done.returncode == 0, (done.stdout, done.stderr, manager.output()[-3000:])
        assert "succeeded" in done.stdout and "ok   seed" in done.stdout, done.stdout
        origin.sync_log()
        preheated = origin.body_bytes("/pre.bin", "GET")
        assert preheated == size  # the seed fetched it once

        # Normal peers read it: dffs get through p2's daemon, and p1's mount.
        out = tmp_path / "p2.out"
        got = subprocess.run(
            hosts["p2"].command(
                [sys.executable, "-m", "dffs", "get", url, "-O", str(out), "--data-dir", str(daemons["p2"].data_dir)]
            ),
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert got.returncode == 0, (got.stderr, daemons["p2"].output()[-3000:])
        assert sha256_file(out) == digest
        assert sha256_file(daemons["p1"].path("/pre.bin", origin)) == digest
        origin.sync_log()
        assert origin.body_bytes("/pre.bin", "GET") == preheated  # not one more byte from the origin

        # Dynamic config reaches the running scheduler and daemons, no restart. The upload limit is
        # checked where it acts: a piece from each daemon's upload port, timed by curl, may come no
        # faster than the limit allows (a token bucket with a small burst; 1.5x is a generous margin).
        task_id = ctl_tasks(daemons["seed"])[0]["task_id"]
        unlimited = {name: fetch_piece(net, hosts, daemons, name, task_id) for name in daemons}
        api(
            net,
            hosts["p1"],
            manager,
            "PUT",
            "/clusters/1/config",
            {"candidate_parent_limit": 2, "blocked_hosts": ["p2"], "upload_limit": UPLOAD_LIMIT},
        )
        wait_for(
            lambda: (
                "event=cluster_config_applied candidate_parent_limit=2 filter_parent_limit=15 "
                "blocked_hosts=p2" in sched.output()
            ),
            what="the scheduler to apply the config",
        )
        for daemon in daemons.values():
            wait_for(
                lambda daemon=daemon: f'"upload_limit": {UPLOAD_LIMIT}' in daemon.output(),
                what=f"{daemon.log_path.name} to apply the config",
            )
        limited = {name: fetch_piece(net, hosts, daemons, name, task_id) for name in daemons}
        assert all(rate <= 1.5 * UPLOAD_LIMIT for rate in limited.values()), (UPLOAD_LIMIT, unlimited, limited)

        # The scheduler stops: its keepalive stream ends, the manager marks it
        # inactive, and daemons drop it at their next refresh.
        sched.stop()
        wait_for(
            lambda: not api(net, hosts["p1"], manager, "GET", "/schedulers")["schedulers"],
            what="scheduler inactive at the manager",
        )
        for name in ("p1", "p2"):
            wait_for(
                lambda name=name: (
                    f"event=scheduler_removed scheduler={hosts['sched'].ip}:8002" in daemons[name].output()
                ),
                what=f"{name} to drop the scheduler",
            )
        all_schedulers = api(net, hosts["p1"], manager, "GET", "/schedulers?state=all")["schedulers"]
        assert [s["state"] for s in all_schedulers] == ["inactive"]
    finally:
        for process in reversed(processes):
            process.stop()
