"""Failover without falling back (issue 16, item 2): every host a network namespace, real processes.

* a scheduler killed mid-task: the task registers again on the next scheduler of its ring, keeps the
  pieces it has and its parents, and the children take nothing from the origin;
* a parent that stops answering (frozen with SIGSTOP, or its link down): dropped after the piece
  timeout, its pieces fetched from the other parents, nothing from the origin;
* the only seed killed mid-task: the pieces the children already hold are served among them; only
  pieces nobody held come from the origin.

The reader's outcome is checked (right bytes, before a generous subprocess timeout: never a hang),
the daemons stay up, and nginx's access log says what the origin sent to whom.
"""

from __future__ import annotations

import re
import signal
import subprocess

import pytest
from cli import sha256_file
from mounts import journaled_pieces
from netns import Network
from test_p2p_cluster import get, journaled, start_cluster, start_scheduler, stop_all, wait_for, wait_ok

MiB = 1024 * 1024
PIECE = 4 * MiB
#: Short waits, as the other failure tests use; a failover must not need longer ones.
CONFIG = "announce_interval = 1\nparent_wait = 2\nparent_rounds = 3\n"


@pytest.fixture
def net():
    with Network(subnet="10.93.0") as network:
        yield network


def origin_pieces(origin, path: str, client: str) -> set[int]:
    """Pieces covered by the origin's GETs of ``path`` from ``client``."""
    pieces: set[int] = set()
    for entry in origin.requests(path, "GET", client=client):
        if entry.body_bytes == 0:
            continue
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", entry.range or "")
        assert match, f"a whole-object GET from {client}: {entry}"
        first, last = int(match.group(1)), int(match.group(2))
        pieces |= set(range(first // PIECE, last // PIECE + 1))
    return pieces


def decisions(sched, daemons) -> dict[str, list[str]]:
    """What the scheduler decided and what the children did with it (for a failure's report)."""
    wanted = ("back_to_source", "event=parents", "piece_not_anchored", "no_parent_serves", "helpers")
    lines = {"sched": sched.output().splitlines()} | {n: daemons[n].output().splitlines() for n in ("p1", "p2")}
    return {
        name: [line[-240:] for line in found if any(w in line for w in wanted)][-12:] for name, found in lines.items()
    }


@pytest.mark.slow
def test_scheduler_killed_mid_task_moves_to_the_next_scheduler(net, tmp_path, nginx_origin, make_file):
    """The origin is slow, so the seed is still fetching when the scheduler dies: it reports its
    origin pieces to the next scheduler, which anchors them there; the children go on with their
    parents and the digests they learned, and get the new ones from the new scheduler."""
    size = 64 * MiB  # 16 pieces: the seed's 8 workers fetch them in two rounds of ~20 s each
    (tmp_path / "www").mkdir()
    digest = make_file(tmp_path / "www" / "f.bin", size, seed=61)

    def origin_factory(root, **kw):
        return nginx_origin(root, limit_rate="200k", **kw)

    origin, scheds, daemons = start_cluster(
        net, tmp_path, origin_factory, peers=2, schedulers=2, seed_rate="40mbit", daemon_config=CONFIG
    )
    try:
        url = f"http://{origin.host}:8080/f.bin"
        # the seed first, so the children find it with pieces (not the policy's back-to-source)
        procs = {"seed": get(url, tmp_path / "seed.out", daemons["seed"])}
        wait_for(lambda: journaled(daemons["seed"]) >= 1, timeout=90, what="the seed to have pieces")
        procs |= {name: get(url, tmp_path / f"{name}.out", daemons[name]) for name in ("p1", "p2")}
        wait_for(lambda: journaled(daemons["p1"]) >= 1, timeout=60, what="p1 to have pieces")
        talking = [s for s in scheds if "event=peer_registered" in s.output()]
        assert len(talking) == 1, "every peer of a task meets at one scheduler"
        dead, other = talking[0], next(s for s in scheds if s is not talking[0])
        assert journaled(daemons["seed"]) < size // PIECE, "the seed is still fetching"
        dead.proc.kill()
        dead.proc.wait()
        for name, proc in procs.items():
            wait_ok(proc, name, daemons[name], timeout=240)
            assert sha256_file(tmp_path / f"{name}.out") == digest, name
        hosts = net.cluster_hosts
        origin.sync_log()
        by_client = {name: origin.body_bytes("/f.bin", "GET", client=hosts[name].ip) for name in ("seed", "p1", "p2")}
        logs = {name: daemons[name].output() for name in ("p1", "p2")}
        why = {n: [line for line in log.splitlines() if "back_to_source" in line][-5:] for n, log in logs.items()}
        seed_ranges = [e.range for e in origin.requests("/f.bin", "GET", client=hosts["seed"].ip)]
        assert by_client == {"seed": size, "p1": 0, "p2": 0}, (by_client, why, seed_ranges)
        for name, log in logs.items():
            if "event=download_done" in log.split("event=scheduler_failover")[0]:
                continue  # finished before it noticed; the other one shows the failover
            assert "event=scheduler_failover" in log and "event=registered_again" in log, (name, log[-3000:])
        assert any("event=registered_again" in log for log in logs.values())
        assert "event=peer_registered" in other.output()  # the next scheduler on the ring took them
        # the seed was mid-task too: it registered again and reported its origin pieces there
        assert "event=registered_again" in daemons["seed"].output()
        assert all(d.alive() for d in daemons.values())
    finally:
        stop_all(scheds, daemons)


@pytest.mark.slow
def test_parents_that_stop_answering_are_dropped_and_their_pieces_fetched_elsewhere(
    net, tmp_path, nginx_origin, make_file
):
    """Two of p2's three parents stop answering mid-transfer at once: p1 frozen with SIGSTOP, p3's
    link set down. Both are dropped after the piece client's timeouts; the seed serves the rest."""
    size = 48 * MiB
    (tmp_path / "www").mkdir()
    digest = make_file(tmp_path / "www" / "g.bin", size, seed=62)
    origin, sched, daemons = start_cluster(net, tmp_path, nginx_origin, peers=3, mounts=True, daemon_config=CONFIG)
    hosts = net.cluster_hosts
    frozen, cut = daemons["p1"], hosts["p3"]
    try:
        url = f"http://{origin.host}:8080/g.bin"
        # the seed, then p1 and p3, hold the whole file: three parents for p2
        for name in ("seed", "p1", "p3"):
            wait_ok(get(url, tmp_path / f"{name}.out", daemons[name]), name, daemons[name])
            (tmp_path / f"{name}.out").unlink()
        for name in ("seed", "p1", "p3"):
            net.limit(hosts[name], "40mbit")  # slow enough that transfers are in flight when they stop
        reader = subprocess.Popen(
            ["sha256sum", str(daemons["p2"].path("/g.bin", origin))], stdout=subprocess.PIPE, text=True
        )
        wait_for(lambda: sum(map(len, journaled_pieces(daemons["p2"].data_dir).values())) >= 2, timeout=60)
        frozen.proc.send_signal(signal.SIGSTOP)
        net.set_link(cut, up=False)
        out, _ = reader.communicate(timeout=240)  # several piece timeouts: never a hang
        assert reader.returncode == 0 and out.split()[0] == digest
        origin.sync_log()
        assert origin.body_bytes("/g.bin", "GET", client=hosts["p2"].ip) == 0
        failed = [line for line in daemons["p2"].output().splitlines() if "event=piece_from_parent_failed" in line]
        for host in (hosts["p1"], cut):
            assert any(f"{host.ip}:" in line for line in failed), f"p2 was fetching from {host.name} when it stopped"
        assert daemons["p2"].alive() and daemons["seed"].alive()
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
        net.set_link(cut, up=True)
        stop_all(sched, daemons)


@pytest.mark.slow
def test_seed_killed_mid_task_children_finish_and_the_swarm_keeps_serving(net, tmp_path, nginx_origin, make_file):
    """The only seed killed (kill -9) while the children still pull from it (its link is slow).
    The children finish with the right bytes and the origin sends only pieces no child held: a
    piece the other child held is taken from it even when that child descends from the asker
    (the scheduler names it as a helper in its back-to-source answer), no piece comes from the
    origin twice, and the dead seed host is not triggered again."""
    size = 48 * MiB
    (tmp_path / "www").mkdir()
    digest = make_file(tmp_path / "www" / "h.bin", size, seed=63)
    origin, sched, daemons = start_cluster(
        net, tmp_path, nginx_origin, peers=2, seed_rate="20mbit", daemon_config=CONFIG
    )
    hosts = net.cluster_hosts
    try:
        url = f"http://{origin.host}:8080/h.bin"
        procs = {name: get(url, tmp_path / f"{name}.out", daemons[name]) for name in ("p1", "p2")}
        wait_for(lambda: journaled(daemons["p1"]) >= 2 and journaled(daemons["p2"]) >= 2, timeout=60)
        daemons["seed"].proc.kill()  # kill -9 mid-task
        daemons["seed"].proc.wait()
        held = {n: set().union(*journaled_pieces(daemons[n].data_dir).values()) for n in ("p1", "p2")}
        assert len(held["p1"] | held["p2"]) < size // PIECE, "killed mid-task"
        for name, proc in procs.items():
            wait_ok(proc, name, daemons[name], timeout=240)
            assert sha256_file(tmp_path / f"{name}.out") == digest, name
        origin.sync_log()
        from_origin = {n: origin_pieces(origin, "/h.bin", hosts[n].ip) for n in ("p1", "p2")}
        ranges = {n: [e.range for e in origin.requests("/h.bin", "GET", client=hosts[n].ip)] for n in ("p1", "p2")}
        report = "\n".join(
            [f"held when the seed died: { {n: sorted(h) for n, h in held.items()} }"]
            + [f"from the origin: { {n: sorted(p) for n, p in from_origin.items()} } ranges: {ranges}"]
            + [f"{name}: {line}" for name, lines in decisions(sched, daemons).items() for line in lines]
        )
        assert not from_origin["p1"] & from_origin["p2"], report  # no piece twice from the origin
        for name, other in (("p1", "p2"), ("p2", "p1")):  # nothing a child held when the seed died
            assert not from_origin[name] & (held[name] | held[other]), report
        by_client = {n: origin.body_bytes("/h.bin", "GET", client=hosts[n].ip) for n in ("p1", "p2")}
        assert sum(by_client.values()) <= size - len(held["p1"] | held["p2"]) * PIECE, (by_client, report)
        assert sched.output().count("event=seed_triggered") == 1, "the dead seed host was triggered again"
        assert daemons["p1"].alive() and daemons["p2"].alive()
    finally:
        stop_all(sched, daemons)


@pytest.mark.slow
def test_a_restarted_scheduler_learns_the_finished_tasks_a_daemon_holds(net, tmp_path, nginx_origin, make_file):
    """A scheduler keeps its graph in memory. Restarted, it answers p1's next AnnounceHost with
    host_known = false, and p1 registers the complete task it holds again, so p2 then gets every
    byte from p1 and nothing from the origin. (The seed, which held the task too, is stopped:
    without the re-registration p2 would be the task's first peer and go to the origin.)"""
    size = 16 * MiB
    (tmp_path / "www").mkdir()
    digest = make_file(tmp_path / "www" / "r.bin", size, seed=65)
    origin, sched, daemons = start_cluster(net, tmp_path, nginx_origin, peers=2, daemon_config=CONFIG)
    try:
        url = f"http://{origin.host}:8080/r.bin"
        wait_ok(get(url, tmp_path / "p1.out", daemons["p1"]), "p1", daemons["p1"])
        daemons["seed"].stop()
        sched.proc.kill()
        sched.proc.wait()
        sched.stop()
        sched = start_scheduler(net, net.cluster_hosts["sched1"], tmp_path, "scheduler-restarted")
        wait_for(
            lambda: "reason=forgot tasks=1 registered=1" in daemons["p1"].output(),
            timeout=60,
            what="p1 to register its finished task with the restarted scheduler",
        )
        # and p2 to have reached it too: a get started while its channel still backs off from the
        # refused connections would find no scheduler and rightly go to the origin
        wait_for(
            lambda: daemons["p2"].output().count("event=scheduler_forgot_host") >= 2,
            timeout=60,
            what="p2 to announce itself to the restarted scheduler",
        )
        origin.sync_log()
        origin.clear_log()
        wait_ok(get(url, tmp_path / "p2.out", daemons["p2"]), "p2", daemons["p2"])
        assert sha256_file(tmp_path / "p2.out") == digest
        origin.sync_log()
        why = [
            line
            for line in (sched.output() + daemons["p2"].output()).splitlines()
            if any(word in line for word in ("back_to_source", "expired", "gc", "parent", "forgot"))
        ]
        assert origin.requests("/r.bin", "GET") == [], ("the origin served what p1 held", why[-20:])
        assert "event=peer_succeeded" in sched.output()
        assert daemons["p1"].alive() and daemons["p2"].alive()
    finally:
        stop_all(sched, daemons)
