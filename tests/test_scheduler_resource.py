"""The scheduler's graph (dffs.scheduler.resource): pure, with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dffs.scheduler.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from dffs.scheduler.resource import (
    TRANSITIONS,
    HostType,
    PeerState,
    TaskState,
    cost_per_mib,
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
    assert task_peer.task.seed_trigger_failed_at is not None


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
    assert child.task.seed_trigger_failed_at == clock.now


def test_cost_per_mib():
    assert cost_per_mib(1.0, 2 * MiB) == 0.5
    assert cost_per_mib(1.0, 0) == 1.0
