"""The scheduler's graph (dffs.scheduler.resource): pure, with a fake clock."""

from __future__ import annotations

import random
from collections import deque
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dffs.scheduler.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, SchedulerError
from dffs.scheduler.resource import (
    RECENT_COSTS,
    TRANSITIONS,
    CostWindow,
    HostType,
    PeerPool,
    PeerState,
    TaskState,
    cost_per_mib,
    cost_stats,
    next_state,
)
from dffs.scheduler.testing import FakeClock, add_host, add_peer, make_graph

MiB = 1 << 20


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def graph(clock):
    return make_graph(clock, peer_ttl=100, task_ttl=50, host_ttl=30, failed_peer_ttl=10, seed_trigger_timeout=5)


# ---- state machine ------------------------------------------------------------


def test_state_machine_table():
    S = PeerState
    assert next_state(S.PENDING, "start") is S.RUNNING
    assert next_state(S.PENDING, "back_to_source") is S.BACK_TO_SOURCE
    assert next_state(S.RUNNING, "back_to_source") is S.BACK_TO_SOURCE
    assert next_state(S.BACK_TO_SOURCE, "start") is S.RUNNING
    assert next_state(S.RUNNING, "finish") is S.SUCCEEDED
    assert next_state(S.BACK_TO_SOURCE, "finish") is S.SUCCEEDED
    assert next_state(S.TRIGGERED, "adopt") is S.PENDING
    for state in S:
        if state is not S.LEAVING:
            assert next_state(state, "leave") is S.LEAVING


@pytest.mark.parametrize(
    "state,event",
    [
        (PeerState.SUCCEEDED, "start"),
        (PeerState.SUCCEEDED, "fail"),
        (PeerState.FAILED, "finish"),
        (PeerState.FAILED, "start"),
        (PeerState.LEAVING, "leave"),
        (PeerState.TRIGGERED, "start"),
        (PeerState.PENDING, "adopt"),
    ],
)
def test_illegal_transitions(state, event):
    with pytest.raises(FailedPrecondition, match=state.value):
        next_state(state, event)


@given(st.lists(st.sampled_from(["adopt", "start", "back_to_source", "finish", "fail", "leave"]), max_size=12))
def test_terminal_states_are_absorbing(events):
    state = PeerState.PENDING
    for event in events:
        if (state, event) not in TRANSITIONS:
            continue
        before = state
        state = next_state(state, event)
        if before in (PeerState.SUCCEEDED, PeerState.FAILED):
            assert state is PeerState.LEAVING
        assert before is not PeerState.LEAVING


# ---- hosts --------------------------------------------------------------------


def test_announce_host_registers_and_refreshes(graph, clock):
    host, new = graph.announce_host("h1", ip="10.0.0.1", port=4000, download_port=4001, idc="dc1")
    assert new and host.ttl == 30 and host.upload_slots == 50
    clock.advance(10)
    again, new = graph.announce_host("h1", ip="10.0.0.2", port=4000, download_port=4001, interval=20)
    assert again is host and not new
    assert host.ip == "10.0.0.2" and host.announced_at == clock.now
    assert host.ttl == 60  # 3 intervals


def test_a_host_s_generation_moves_only_when_what_it_says_changes(graph, clock):
    """The scheduler rebuilds a host's message (which every answer naming it carries) per generation:
    the periodic announce that repeats itself must not make the next decision rebuild it."""
    said = {"ip": "10.0.0.1", "port": 4000, "download_port": 4001, "idc": "dc1", "labels": {"a": "b"}}
    host, _ = graph.announce_host("h1", **said)
    first = host.generation
    clock.advance(30)
    graph.announce_host("h1", **said, interval=30)
    assert host.generation == first and host.announced_at == clock.now
    for change in ({"ip": "10.0.0.2"}, {"labels": {"a": "c"}}, {"disable_shared": True}, {"type": HostType.SEED}):
        before = host.generation
        graph.announce_host("h1", **{**said, **change})
        assert host.generation == before + 1, change
        graph.announce_host("h1", **said)  # back: a change too


def test_seed_hosts_get_more_slots_and_labels_override(graph):
    seed = add_host(graph, "seed", seed=True)
    assert seed.is_seed and seed.upload_slots == 200 and seed.type is HostType.SEED
    assert add_host(graph, "h", labels={"upload_slots": "7"}).upload_slots == 7
    with pytest.raises(InvalidArgument):
        add_host(graph, "bad", labels={"upload_slots": "many"})
    with pytest.raises(InvalidArgument):
        graph.announce_host("", ip="10.0.0.1")


def test_delete_host_drops_its_peers_and_edges(graph):
    parent = add_peer(graph, "parent", "h1", state=PeerState.RUNNING, pieces=2)
    child = add_peer(graph, "child", "h2")
    graph.set_parents(child, [parent])
    removed = graph.delete_host("h1")
    assert [p.id for p in removed] == ["parent"]
    assert "parent" not in graph.peers and "parent" not in child.task.peers
    assert child.parents == {}
    with pytest.raises(NotFound):
        graph.delete_host("h1")


# ---- peers and tasks ----------------------------------------------------------


def test_register_creates_task_and_validates(graph):
    add_host(graph, "h1")
    peer = graph.register_peer("p1", "h1", "t1", url="http://o/a", piece_length=4 * MiB)
    assert peer.state is PeerState.PENDING
    assert graph.task("t1").piece_length == 4 * MiB and graph.task("t1").state is TaskState.RUNNING
    with pytest.raises(AlreadyExists):
        graph.register_peer("p1", "h1", "t1", url="http://o/a")
    with pytest.raises(NotFound, match="announce"):
        graph.register_peer("p2", "nohost", "t1", url="http://o/a")
    with pytest.raises(InvalidArgument, match="piece length"):
        graph.register_peer("p3", "h1", "t1", url="http://o/a", piece_length=8 * MiB)
    with pytest.raises(InvalidArgument):
        graph.register_peer("", "h1", "t1")
    assert set(graph.peers) == {"p1"}


def test_pieces_costs_and_upload_stats(graph):
    parent = add_peer(graph, "parent", "h1", state=PeerState.BACK_TO_SOURCE)
    graph.piece_finished(parent, 0, cost=0.2, length=4 * MiB, offset=0)
    assert parent.has_piece(0) and parent.finished_count == 1
    child = add_peer(graph, "child", "h2")
    got = graph.piece_finished(child, 0, parent_id="parent", cost=0.4, length=2 * MiB)
    assert got is parent
    assert child.state is PeerState.RUNNING  # the first piece implies start
    assert list(parent.upload_costs) == [pytest.approx(0.2)]  # seconds per MiB
    assert parent.host.upload_count == 1
    graph.piece_finished(child, 0, parent_id="parent", cost=0.4, length=2 * MiB)  # duplicate report
    assert child.finished_count == 1
    assert child.piece_costs[0] == pytest.approx(0.4)
    assert list(child.piece_numbers()) == [0]


def test_piece_length_learned_from_offsets_then_enforced(graph):
    peer = add_peer(graph, "p", "h1", state=PeerState.BACK_TO_SOURCE)
    graph.piece_finished(peer, 3, cost=0, length=MiB, offset=3 * MiB)
    assert peer.task.piece_length == MiB
    with pytest.raises(InvalidArgument, match="offset"):
        graph.piece_finished(peer, 4, cost=0, length=MiB, offset=5 * MiB)


@pytest.mark.parametrize("number", [-1, 1 << 17, 10**9])
def test_absurd_piece_numbers_rejected(graph, number):
    peer = add_peer(graph, "p", "h1", state=PeerState.BACK_TO_SOURCE)
    with pytest.raises(InvalidArgument, match="piece number"):
        graph.piece_finished(peer, number)
    assert peer.finished_count == 0


def test_piece_numbers_bounded_by_known_piece_count(graph):
    add_peer(graph, "done", "h1", state=PeerState.SUCCEEDED, pieces=4)
    peer = add_peer(graph, "p", "h2", state=PeerState.RUNNING)
    graph.piece_finished(peer, 3, parent_id="done")
    with pytest.raises(InvalidArgument, match="beyond"):
        graph.piece_finished(peer, 4, parent_id="done")


def test_bad_costs_and_self_parent_rejected(graph):
    peer = add_peer(graph, "p", "h1", state=PeerState.RUNNING)
    with pytest.raises(InvalidArgument):
        graph.piece_finished(peer, 0, cost=float("nan"))
    with pytest.raises(InvalidArgument):
        graph.piece_finished(peer, 0, cost=-1)
    with pytest.raises(InvalidArgument, match="itself"):
        graph.piece_finished(peer, 0, parent_id="p")


def test_piece_failed_blocks_only_when_permanent(graph):
    a = add_peer(graph, "a", "h1", state=PeerState.RUNNING, pieces=2)
    b = add_peer(graph, "b", "h2", state=PeerState.RUNNING, pieces=2)
    child = add_peer(graph, "child", "h3", state=PeerState.RUNNING)
    graph.set_parents(child, [a, b])
    graph.piece_failed(child, 0, parent_id="a", temporary=True)
    assert "a" not in child.blocked_parents and "a" in child.parents
    assert a.host.upload_failed_count == 1
    graph.piece_failed(child, 0, parent_id="b", temporary=False)
    assert "b" in child.blocked_parents and "b" not in child.parents and child.id not in b.children
    graph.piece_failed(child, 0, parent_id="gone", temporary=False)  # unknown parent: still blocked
    assert "gone" in child.blocked_parents


def test_peer_finished_sets_task_totals_and_clears_edges(graph):
    parent = add_peer(graph, "parent", "h1", state=PeerState.RUNNING, pieces=3)
    child = add_peer(graph, "child", "h2", state=PeerState.RUNNING)
    graph.set_parents(child, [parent])
    assert parent.host.upload_used == 1
    graph.peer_finished(child, content_length=10 * MiB, piece_count=3)
    assert child.state is PeerState.SUCCEEDED and child.finished_count == 3 and child.pieces == 0b111
    assert child.task.content_length == 10 * MiB and child.task.piece_count == 3
    assert child.task.state is TaskState.SUCCEEDED
    assert parent.host.upload_used == 0 and child.parents == {}
    with pytest.raises(FailedPrecondition):
        graph.piece_finished(child, 0)


@pytest.mark.parametrize(
    "content_length,piece_count,match",
    [
        (10, 0, "content length 10 with 0"),
        (0, 2, "with 2 pieces"),
        (5 * MiB, 1, "piece count 1 but piece 2"),
    ],
)
def test_peer_finished_validates_totals(graph, content_length, piece_count, match):
    peer = add_peer(graph, "p", "h1", state=PeerState.BACK_TO_SOURCE, pieces=3)
    with pytest.raises(InvalidArgument, match=match):
        graph.peer_finished(peer, content_length=content_length, piece_count=piece_count)
    assert peer.state is PeerState.BACK_TO_SOURCE


def test_totals_must_agree_between_peers(graph):
    add_peer(graph, "a", "h1", state=PeerState.SUCCEEDED, pieces=2)
    b = add_peer(graph, "b", "h2", state=PeerState.RUNNING)
    with pytest.raises(InvalidArgument, match="differs"):
        graph.peer_finished(b, content_length=3 * (4 * MiB), piece_count=3)
    graph.register_peer("c", "h2", "t-pl", url="u", piece_length=MiB)
    with pytest.raises(InvalidArgument, match="do not match"):
        graph.peer_finished(graph.peer("c"), content_length=3 * MiB, piece_count=2)


def test_empty_task(graph):
    peer = add_peer(graph, "p", "h1", state=PeerState.BACK_TO_SOURCE)
    graph.peer_finished(peer, content_length=0, piece_count=0)
    assert peer.task.is_empty


def test_task_state_follows_its_peers(graph):
    p = add_peer(graph, "p", "h1")
    task = p.task
    assert task.state is TaskState.RUNNING
    graph.peer_back_to_source_started(p)
    graph.peer_failed(p)
    assert task.state is TaskState.FAILED
    q = add_peer(graph, "q", "h2", state=PeerState.BACK_TO_SOURCE)
    assert task.state is TaskState.RUNNING
    graph.peer_finished(q, content_length=1, piece_count=1)
    assert task.state is TaskState.SUCCEEDED


def test_failed_parent_loses_its_children(graph):
    parent = add_peer(graph, "parent", "h1", state=PeerState.RUNNING, pieces=1)
    child = add_peer(graph, "child", "h2")
    graph.set_parents(child, [parent])
    graph.peer_failed(parent)
    assert child.parents == {} and parent.children == {}


def test_back_to_source_count(graph):
    seed = add_peer(graph, "s", add_host(graph, "seed", seed=True), state=PeerState.BACK_TO_SOURCE)
    a = add_peer(graph, "a", "h1", state=PeerState.BACK_TO_SOURCE)
    b = add_peer(graph, "b", "h2")
    b.need_back_to_source = True
    task = a.task
    assert task.back_to_source_count() == 2
    assert task.back_to_source_count(include_seeds=True) == 3
    assert task.back_to_source_count(exclude=b) == 1
    graph.peer_finished(a, content_length=1, piece_count=1)
    assert task.back_to_source_count() == 1 and seed.state is PeerState.BACK_TO_SOURCE


def test_adopted_placeholder_keeps_its_parent_edges_consistent(graph):
    """A placeholder given parents before its seed registers: after the adoption the parent's
    children are keyed by the new id too (found by the index property test below: the parent
    still listed the placeholder's old id, so 'edge p0 -> real has no reverse')."""
    seed_host = add_host(graph, "seed", seed=True)
    parent = add_peer(graph, "p0", "seed")
    placeholder = graph.add_triggered_seed(parent.task, seed_host)
    old_id = placeholder.id
    graph.set_parents(placeholder, [parent])
    adopted = graph.register_peer("real", "seed", parent.task.id, url="http://o/x")
    assert adopted is placeholder and adopted.parents == {"p0": parent}
    assert parent.children == {"real": adopted} and old_id not in parent.children
    assert graph.index_problems() == []
    graph.peer_finished(adopted, content_length=8, piece_count=1)
    assert graph.index_problems() == []


def test_triggered_seed_is_adopted_by_the_seed_registration(graph):
    child = add_peer(graph, "child", "h1")
    seed_host = add_host(graph, "seed", seed=True)
    placeholder = graph.add_triggered_seed(child.task, seed_host)
    old_id = placeholder.id
    graph.set_parents(child, [placeholder])
    adopted = graph.register_peer("real", "seed", child.task.id, url="http://o/x")
    assert adopted is placeholder and adopted.id == "real" and adopted.state is PeerState.PENDING
    assert graph.peer(old_id) is adopted and old_id in adopted.aliases
    assert child.parents == {"real": adopted} and adopted.children == {"child": child}
    # Reports against the old id land on the adopted peer.
    graph.peer_back_to_source_started(adopted)
    graph.piece_finished(adopted, 0)
    graph.piece_finished(child, 0, parent_id=old_id)
    assert adopted.host.upload_count == 1
    graph.block_parents(child, [old_id])
    assert {"real", old_id} <= child.blocked_parents
    graph.leave_peer(adopted)
    assert graph.find_peer(old_id) is None


def test_add_triggered_seed_needs_a_seed_and_names_uniquely(graph):
    task_peer = add_peer(graph, "p", "h1")
    with pytest.raises(InvalidArgument):
        graph.add_triggered_seed(task_peer.task, graph.host("h1"))
    seed_host = add_host(graph, "seed", seed=True)
    first = graph.add_triggered_seed(task_peer.task, seed_host)
    graph.peer_failed(first)
    second = graph.add_triggered_seed(task_peer.task, seed_host)
    assert first.id != second.id
    assert set(task_peer.task.failed_seed_hosts) == {"seed"}


def test_delete_task_from_host(graph):
    a = add_peer(graph, "a", "h1", state=PeerState.SUCCEEDED, pieces=1)
    add_peer(graph, "b", "h2", state=PeerState.SUCCEEDED, pieces=1)
    assert graph.delete_task_from_host("h1", a.task.id) == [a]
    assert set(a.task.peers) == {"b"}
    with pytest.raises(NotFound):
        graph.delete_task_from_host("h1", a.task.id)
    with pytest.raises(NotFound):
        graph.delete_task_from_host("h1", "nope")


# ---- GC -----------------------------------------------------------------------


def test_gc_drops_silent_hosts_with_their_peers(graph, clock):
    add_peer(graph, "a", "h1", state=PeerState.RUNNING, pieces=1)
    add_peer(graph, "b", "h2", state=PeerState.RUNNING, pieces=1)
    clock.advance(20)
    graph.announce_host("h2", ip="10.0.0.9", port=1, download_port=2)
    clock.advance(15)  # h1 silent 35 s > 30, h2 15 s
    report = graph.gc()
    assert report.hosts == ("h1",) and "a" in report.peers and "task" in report.touched_tasks
    assert set(graph.hosts) == {"h2"} and set(graph.peers) == {"b"}


def test_gc_uses_the_announced_interval(graph, clock):
    graph.announce_host("h", ip="10.0.0.1", port=1, download_port=2, interval=100)
    clock.advance(299)
    assert not graph.gc()
    clock.advance(2)
    assert graph.gc().hosts == ("h",)


def test_gc_expires_peers_failed_peers_and_tasks(graph, clock):
    keep = add_peer(graph, "keep", "h1", state=PeerState.SUCCEEDED, pieces=1, task_id="t1")
    failed = add_peer(graph, "failed", "h2", state=PeerState.FAILED, task_id="t1")
    add_peer(graph, "old", "h3", state=PeerState.RUNNING, task_id="t2", pieces=1)
    for h in ("h1", "h2", "h3"):  # hosts stay alive throughout
        graph.hosts[h].ttl = 10**9
    clock.advance(11)
    report = graph.gc()
    assert report.peers == ("failed",) and failed.id not in graph.peers
    clock.advance(90)  # keep and old: 101 s since their last update > peer_ttl 100
    graph.piece_finished(graph.peer("old"), 0)  # activity refreshes "old"
    report = graph.gc()
    assert report.peers == ("keep",) and "keep" not in graph.peers and keep.task.peers == {}
    assert "t1" in graph.tasks  # the task itself waits for its own TTL
    clock.advance(51)
    report = graph.gc()
    assert report.tasks == ("t1",) and set(graph.tasks) == {"t2"}


def test_gc_gives_up_on_triggered_seeds(graph, clock):
    child = add_peer(graph, "child", "h1")
    seed_host = add_host(graph, "seed", seed=True)
    seed_host.ttl = child.host.ttl = 10**9
    placeholder = graph.add_triggered_seed(child.task, seed_host)
    graph.set_parents(child, [placeholder])
    clock.advance(4)
    assert not graph.gc()
    clock.advance(2)
    report = graph.gc()
    assert report.expired_triggers == (placeholder.id,)
    assert placeholder.state is PeerState.FAILED and child.parents == {}
    assert child.task.failed_seed_hosts == {"seed": clock.now}


def test_cost_per_mib():
    assert cost_per_mib(1.0, 2 * MiB) == 0.5
    assert cost_per_mib(1.0, 0) == 1.0


# ---- indexes --------------------------------------------------------------------


def _random_operation(graph, clock, data) -> None:
    """One graph operation with random arguments; bad ones raise SchedulerError and must change nothing."""
    hosts = sorted(graph.hosts)
    peers = sorted(graph.peers)
    draw = data.draw
    op = draw(
        st.sampled_from(
            [
                "announce",
                "register",
                "start",
                "source",
                "piece",
                "fail_piece",
                "parents",
                "block",
                "finish",
                "fail",
                "leave",
                "delete_pieces",
                "delete_host",
                "gc",
                "trigger",
                "flag",
            ]
        )  # fmt: skip
    )
    peer = graph.peers[draw(st.sampled_from(peers))] if peers else None
    if op == "announce" or not hosts:
        name = draw(st.sampled_from([f"h{i}" for i in range(6)]))
        add_host(
            graph,
            name,
            seed=draw(st.booleans()),
            disable_shared=draw(st.booleans()),
            labels={"upload_slots": str(draw(st.integers(0, 3)))},
        )
    elif op == "register":
        graph.register_peer(
            f"p{draw(st.integers(0, 30))}",
            draw(st.sampled_from(hosts)),
            draw(st.sampled_from(["t1", "t2"])),
            url="http://origin/x",
            need_back_to_source=draw(st.booleans()),
        )
    elif peer is None:
        return
    elif op == "start":
        graph.peer_started(peer)
    elif op == "source":
        graph.peer_back_to_source_started(peer)
    elif op == "piece":
        parent = draw(st.sampled_from([None, *peers]))
        graph.piece_finished(peer, draw(st.integers(0, 7)), parent_id=parent, cost=0.1, length=MiB)
    elif op == "fail_piece":
        graph.piece_failed(peer, 0, parent_id=draw(st.sampled_from(peers)), temporary=draw(st.booleans()))
    elif op == "parents":
        graph.set_parents(peer, [graph.peers[p] for p in draw(st.lists(st.sampled_from(peers), max_size=3))])
    elif op == "block":
        graph.block_parents(peer, draw(st.lists(st.sampled_from(peers), max_size=2)))
    elif op == "finish":
        graph.peer_finished(peer, content_length=8 * MiB, piece_count=8)
    elif op == "fail":
        graph.peer_failed(peer)
    elif op == "leave":
        graph.leave_peer(peer)
    elif op == "delete_pieces":
        graph.delete_pieces(peer.host.id, peer.task.id, draw(st.lists(st.integers(0, 7), max_size=3)))
    elif op == "delete_host":
        graph.delete_host(draw(st.sampled_from(hosts)))
    elif op == "gc":
        clock.advance(draw(st.sampled_from([1, 6, 11, 40])))
        graph.gc()
    elif op == "trigger":
        seeds = graph.seed_hosts()
        if seeds:
            graph.add_triggered_seed(peer.task, draw(st.sampled_from(seeds)))
    elif op == "flag":
        peer.need_back_to_source = draw(st.booleans())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_indexes_agree_with_the_graph_after_any_operations(data):
    """Per-task state counts, pool of servers, origin fetchers, seed peers; per-host upload slots
    in use; the seed hosts: whatever happens, each equals its slow recomputation."""
    clock = FakeClock()
    graph = make_graph(clock, task_ttl=20, failed_peer_ttl=5, seed_trigger_timeout=5, collect_offers=True)
    for _ in range(data.draw(st.integers(1, 60))):
        try:
            _random_operation(graph, clock, data)
        except SchedulerError:
            pass
        assert graph.index_problems() == []


def test_pool_of_servers_follows_state_pieces_and_sharing(graph):
    task_peer = add_peer(graph, "pending", "h1")
    task = task_peer.task
    assert task_peer not in task.servers  # pending: has nothing, may never start
    running = add_peer(graph, "running", "h2", state=PeerState.RUNNING)
    assert running not in task.servers  # nothing to give yet
    graph.piece_finished(running, 0, parent_id="pending")
    assert running in task.servers
    graph.delete_pieces("h2", task.id, [0])
    assert running not in task.servers
    seed = graph.add_triggered_seed(task, add_host(graph, "seed", seed=True))
    assert seed in task.servers  # a seed fetching from the origin serves what it is about to get
    add_host(graph, "seed", seed=True, disable_shared=True)
    assert seed not in task.servers
    assert graph.index_problems() == []


def test_seed_hosts_are_indexed_as_they_announce(graph):
    add_host(graph, "a", seed=True)
    add_host(graph, "b")
    assert [h.id for h in graph.seed_hosts()] == ["a"]
    add_host(graph, "a")  # no longer a seed
    add_host(graph, "b", seed=True)
    assert [h.id for h in graph.seed_hosts()] == ["b"]
    graph.delete_host("b")
    assert graph.seed_hosts() == []


def test_upload_slots_in_use_are_counted_not_walked(graph):
    parent = add_peer(graph, "parent", "h1", state=PeerState.SUCCEEDED, pieces=2)
    children = [add_peer(graph, f"c{i}", f"ch{i}") for i in range(3)]
    for child in children:
        graph.set_parents(child, [parent])
    graph.set_parents(children[0], [parent])  # the same edge again
    assert parent.host.upload_used == 3
    graph.block_parents(children[1], ["parent"])
    graph.leave_peer(children[2])
    assert parent.host.upload_used == 1 and graph.index_problems() == []


def test_peers_keep_no_download_cost_history():
    """Nothing reads a peer's own download costs; only what children fetched from it counts."""
    graph = make_graph(FakeClock())
    peer = add_peer(graph, "p", "h1", state=PeerState.BACK_TO_SOURCE, pieces=3)
    assert not hasattr(peer, "download_costs") and len(peer.upload_costs) == 0


@given(st.lists(st.floats(0, 100), max_size=200), st.integers(1, 70))
def test_cost_window_is_a_bounded_queue(costs, maxlen):
    window, reference = CostWindow(maxlen=maxlen), deque(maxlen=maxlen)
    for cost in costs:
        window.append(cost)
        reference.append(cost)
    assert list(window) == list(reference) == window.tolist()
    assert len(window) == len(reference)
    if reference:
        assert window[-1] == reference[-1] and window[0] == reference[0] and window[1:] == list(reference)[1:]


#: Costs a piece report can give: 0, or at least 1 ns over 2**40 bytes (> 2**-50 s/MiB).
_report_costs = st.one_of(st.just(0.0), st.floats(2**-50, 1e6))


@given(st.lists(_report_costs, max_size=300), st.integers(1, 70))
def test_cost_window_keeps_exact_sums_as_costs_pass_through(costs, maxlen):
    """The sums a decision asks for are kept on append (O(1) questions) and stay exact however
    many costs pass through: the same as computing them from the window's contents, and the
    recent mean is the exact mean of the last RECENT_COSTS, rounded once."""
    window = CostWindow(maxlen=maxlen)
    for cost in costs:
        window.append(cost)
        contents = window.tolist()
        assert window.stats() == cost_stats(contents)
        recent = contents[-RECENT_COSTS:]
        exact = sum(map(Fraction, recent)) / len(recent) if recent else None
        assert window.recent_mean() == (float(exact) if exact is not None else None)
    assert (window.stats() is None) == (not costs)


def test_peer_pool_samples_without_copying_and_removes_in_constant_time(graph):
    pool = PeerPool()
    peers = [add_peer(graph, f"p{i}", f"h{i}") for i in range(50)]
    assert all(pool.add(p) for p in peers) and not pool.add(peers[0])
    for p in peers[::2]:
        assert pool.discard(p)
    assert not pool.discard(peers[0]) and len(pool) == 25
    assert set(pool) == set(peers[1::2])
    rng = random.Random(7)
    sample = pool.sample(10, rng)
    assert len(sample) == len(set(sample)) == 10 and set(sample) <= set(peers[1::2])
    assert sorted(p.id for p in pool.sample(100, rng)) == sorted(p.id for p in peers[1::2])
