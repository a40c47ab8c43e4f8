"""The scheduler's parent choice (dffs.scheduler.evaluator): pure, no sockets."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dffs.scheduler import evaluator
from dffs.scheduler.evaluator import (
    DEFAULT_WEIGHTS,
    candidate_parents,
    creates_cycle,
    exclusion,
    filter_parents,
    idc_affinity,
    is_bad_parent,
    location_affinity,
    rank_parents,
)
from dffs.scheduler.resource import PeerState
from dffs.scheduler.testing import FakeClock, add_host, add_peer, make_graph


@pytest.fixture
def graph():
    return make_graph(FakeClock())


def ids(peers):
    return [p.id for p in peers]


# ---- filters ----------------------------------------------------------------


def test_weights_sum_to_one():
    assert sum(attrs.astuple(DEFAULT_WEIGHTS)) == pytest.approx(1.0)


def test_same_host_and_self_are_excluded(graph):
    child = add_peer(graph, "child", "h1")
    sibling = add_peer(graph, "sibling", "h1", state=PeerState.RUNNING, pieces=3)
    assert exclusion(child, child) == "self"
    assert exclusion(sibling, child) == "same_host"
    assert candidate_parents(child, graph) == []


@pytest.mark.parametrize("state", [PeerState.FAILED, PeerState.LEAVING, PeerState.PENDING])
def test_parents_in_bad_states_are_excluded(graph, state):
    child = add_peer(graph, "child", "h1")
    parent = add_peer(graph, "parent", "h2", state=state, pieces=2 if state is not PeerState.PENDING else 0)
    assert exclusion(parent, child) in ("state",)


@pytest.mark.parametrize("state", [PeerState.RUNNING, PeerState.BACK_TO_SOURCE, PeerState.SUCCEEDED])
def test_parents_with_pieces_in_good_states_are_offered(graph, state):
    child = add_peer(graph, "child", "h1")
    add_peer(graph, "parent", "h2", state=state, pieces=2)
    assert ids(candidate_parents(child, graph)) == ["parent"]


def test_blocklist_by_peer_id_host_id_and_peer_blocks(graph):
    child = add_peer(graph, "child", "h1")
    add_peer(graph, "a", "h2", state=PeerState.RUNNING, pieces=2)
    add_peer(graph, "b", "h3", state=PeerState.RUNNING, pieces=2)
    add_peer(graph, "c", "h4", state=PeerState.RUNNING, pieces=2)
    assert ids(candidate_parents(child, graph, blocklist={"a", "h3"})) == ["c"]
    graph.block_parents(child, ["c"])
    assert ids(candidate_parents(child, graph, blocklist={"a"})) == ["b"]
    _, excluded = filter_parents(child, {"a", "h3"})
    assert excluded == {"a": "blocked", "b": "blocked", "c": "blocked"}


def test_useless_parent_has_nothing_the_child_lacks(graph):
    child = add_peer(graph, "child", "h1", state=PeerState.RUNNING, pieces=[0, 1, 2])
    add_peer(graph, "subset", "h2", state=PeerState.RUNNING, pieces=[0, 2])
    add_peer(graph, "empty_bts", "h3", state=PeerState.BACK_TO_SOURCE)
    add_peer(graph, "more", "h4", state=PeerState.RUNNING, pieces=[1, 3])
    usable, excluded = filter_parents(child)
    assert ids(usable) == ["more"]
    assert excluded["subset"] == "useless" and excluded["empty_bts"] == "useless"


def test_seed_fetching_from_origin_is_useful_without_pieces(graph):
    child = add_peer(graph, "child", "h1")
    seed_host = add_host(graph, "seed", seed=True)
    seed = graph.add_triggered_seed(child.task, seed_host)
    assert seed.state is PeerState.TRIGGERED
    assert ids(candidate_parents(child, graph)) == [seed.id]
    graph.register_peer("seed-peer", "seed", child.task.id, url="http://origin/task")  # adoption
    assert seed.id == "seed-peer" and seed.state is PeerState.PENDING
    assert candidate_parents(child, graph) == []  # pending: may never start
    graph.peer_back_to_source_started(seed)
    assert ids(candidate_parents(child, graph)) == ["seed-peer"]


def test_normal_peer_fetching_from_origin_without_pieces_is_not_useful(graph):
    child = add_peer(graph, "child", "h1")
    add_peer(graph, "bts", "h2", state=PeerState.BACK_TO_SOURCE)
    assert candidate_parents(child, graph) == []


def test_disabled_sharing_and_full_upload_slots_exclude(graph):
    child = add_peer(graph, "child", "h1")
    add_host(graph, "private", disable_shared=True)
    add_peer(graph, "p", "private", state=PeerState.RUNNING, pieces=1)
    add_host(graph, "busy", labels={"upload_slots": "1"})
    busy = add_peer(graph, "busy-peer", "busy", state=PeerState.RUNNING, pieces=1)
    other_child = add_peer(graph, "other", "h9")
    graph.set_parents(other_child, [busy])
    _, excluded = filter_parents(child)
    assert excluded["p"] == "not_shared"
    assert excluded["busy-peer"] == "no_upload_slot"
    # A child already using the slot may keep it on re-evaluation.
    assert exclusion(busy, other_child) is None


def test_cycles_direct_and_transitive_are_excluded(graph):
    a = add_peer(graph, "a", "h1", state=PeerState.RUNNING, pieces=[0])
    b = add_peer(graph, "b", "h2", state=PeerState.RUNNING, pieces=[1])
    c = add_peer(graph, "c", "h3", state=PeerState.RUNNING, pieces=[2])
    graph.set_parents(b, [a])  # a -> b
    graph.set_parents(c, [b])  # b -> c
    assert creates_cycle(b, a) and creates_cycle(c, a)
    assert not creates_cycle(a, c)
    assert exclusion(b, a) == "cycle" and exclusion(c, a) == "cycle"
    assert ids(candidate_parents(a, graph)) == []
    assert set(ids(candidate_parents(c, graph))) == {"a", "b"}


def test_bad_parent_by_cost_is_excluded(graph):
    child = add_peer(graph, "child", "h1")
    slow = add_peer(graph, "slow", "h2", state=PeerState.RUNNING, pieces=2)
    slow.upload_costs.extend([0.1, 0.1, 0.1, 0.1, 5.0])
    assert exclusion(slow, child) == "bad"
    slow.upload_costs.append(0.1)
    assert exclusion(slow, child) is None


# ---- bad-parent rule ----------------------------------------------------------


def test_is_bad_parent_needs_history():
    assert not is_bad_parent([])
    assert not is_bad_parent([0.1, 100.0])
    assert not is_bad_parent([0.1, 0.1, 100.0])  # 2 earlier samples < BAD_MIN_HISTORY
    assert is_bad_parent([0.1, 0.1, 0.1, 100.0])


def test_is_bad_parent_ratio_below_normal_sample():
    history = [1.0] * 10
    assert not is_bad_parent([*history, 20.0])
    assert is_bad_parent([*history, 20.1])


def test_is_bad_parent_three_sigma_on_large_sample():
    history = [1.0, 1.2] * 20  # mean 1.1, stdev 0.1
    assert not is_bad_parent([*history, 1.35])
    assert not is_bad_parent([*history, 2.1])  # above 3 sigma but not twice the mean
    assert is_bad_parent([*history, 2.3])


def test_is_bad_parent_ignores_noise_floor():
    assert not is_bad_parent([0.0, 0.0, 0.0, 0.01])  # 10 ms/MiB is not slow
    assert is_bad_parent([0.0, 0.0, 0.0, 0.05])


@given(st.lists(st.floats(min_value=0, max_value=1e3), min_size=4, max_size=80))
def test_is_bad_parent_never_for_a_cost_at_or_below_the_mean(history):
    mean = sum(history) / len(history)
    assert not is_bad_parent([*history, mean])
    assert not is_bad_parent([*history, min(history)])


# ---- scoring ----------------------------------------------------------------


def test_affinities():
    assert idc_affinity("dc1", "DC1") == 1 and idc_affinity("dc1", "dc2") == 0 and idc_affinity("", "") == 0
    assert location_affinity("a|b|c", "a|b|c") == 1
    assert location_affinity("a|b|c", "a|b|d") == pytest.approx(2 / 5)
    assert location_affinity("x|b", "a|b") == 0
    assert location_affinity("", "a") == 0
    assert location_affinity("a|b|c|d|e|f", "a|b|c|d|e|g") == 1


def test_more_pieces_win(graph):
    child = add_peer(graph, "child", "h1")
    add_peer(graph, "few", "h2", state=PeerState.RUNNING, pieces=1)
    add_peer(graph, "many", "h3", state=PeerState.RUNNING, pieces=8)
    add_peer(graph, "done", "h4", state=PeerState.SUCCEEDED, pieces=10)
    assert ids(candidate_parents(child, graph)) == ["done", "many", "few"]


def test_idc_and_location_break_ties(graph):
    add_host(graph, "me", idc="dc1", location="cn|sh|pd")
    child = add_peer(graph, "child", "me")
    add_host(graph, "far")
    add_host(graph, "near-loc", location="cn|sh|xh")
    add_host(graph, "same-idc", labels={"idc": "dc1"})
    for host in ("far", "near-loc", "same-idc"):
        add_peer(graph, host, host, state=PeerState.RUNNING, pieces=3)
    assert ids(candidate_parents(child, graph)) == ["same-idc", "near-loc", "far"]


def test_free_upload_slots_and_normal_hosts_preferred(graph):
    child = add_peer(graph, "child", "h1")
    add_host(graph, "loaded", labels={"upload_slots": "4"})
    loaded = add_peer(graph, "loaded", "loaded", state=PeerState.SUCCEEDED, pieces=4)
    for i in range(3):
        graph.set_parents(add_peer(graph, f"c{i}", f"ch{i}"), [loaded])
    add_host(graph, "idle", labels={"upload_slots": "4"})
    add_peer(graph, "idle", "idle", state=PeerState.SUCCEEDED, pieces=4)
    add_host(graph, "seedhost", seed=True, labels={"upload_slots": "4"})
    add_peer(graph, "seed", "seedhost", state=PeerState.SUCCEEDED, pieces=4)
    ranked = rank_parents(child, filter_parents(child)[0])
    assert [c.peer.id for c in ranked] == ["idle", "seed", "loaded"]
    assert ranked[0].parts["host_type"] == 1 and ranked[1].parts["host_type"] == 0.5
    assert ranked[2].parts["free_upload"] == pytest.approx(0.25)


def test_faster_parent_wins_and_unmeasured_is_neutral(graph):
    child = add_peer(graph, "child", "h1")
    fast = add_peer(graph, "fast", "h2", state=PeerState.RUNNING, pieces=3)
    slow = add_peer(graph, "slow", "h3", state=PeerState.RUNNING, pieces=3)
    add_peer(graph, "new", "h4", state=PeerState.RUNNING, pieces=3)
    fast.upload_costs.extend([0.1] * 5)
    slow.upload_costs.extend([0.8] * 5)
    ranked = rank_parents(child, filter_parents(child)[0])
    parts = {c.peer.id: c.parts["speed"] for c in ranked}
    assert parts == {"fast": 1.0, "slow": pytest.approx(0.125), "new": 0.5}
    assert [c.peer.id for c in ranked] == ["fast", "new", "slow"]


def test_upload_failures_lower_the_score(graph):
    child = add_peer(graph, "child", "h1")
    a = add_peer(graph, "a", "h2", state=PeerState.RUNNING, pieces=3)
    add_peer(graph, "b", "h3", state=PeerState.RUNNING, pieces=3)
    a.host.upload_count, a.host.upload_failed_count = 1, 3
    assert ids(candidate_parents(child, graph)) == ["b", "a"]


def test_limit_k(graph):
    child = add_peer(graph, "child", "h0")
    for i in range(10):
        add_peer(graph, f"p{i}", f"h{i + 1}", state=PeerState.RUNNING, pieces=i + 1)
    assert ids(candidate_parents(child, graph)) == ["p9", "p8", "p7", "p6"]
    assert len(candidate_parents(child, graph, limit=2)) == 2
    assert candidate_parents(child, graph, limit=0) == []
    assert len(candidate_parents(child, graph, limit=50)) == 10


def test_ties_break_on_peer_id(graph):
    child = add_peer(graph, "child", "h0")
    for name in ("zeta", "alpha", "mid"):
        add_peer(graph, name, f"host-{name}", state=PeerState.RUNNING, pieces=2)
    assert ids(candidate_parents(child, graph)) == ["alpha", "mid", "zeta"]


# ---- properties ---------------------------------------------------------------

_STATES = [PeerState.PENDING, PeerState.RUNNING, PeerState.BACK_TO_SOURCE, PeerState.SUCCEEDED, PeerState.FAILED]


@st.composite
def swarms(draw):
    """A task's peers on a few hosts, random states, pieces, edges and costs."""
    graph = make_graph(FakeClock())
    n_hosts = draw(st.integers(1, 6))
    for h in range(n_hosts):
        add_host(
            graph,
            f"h{h}",
            seed=draw(st.booleans()),
            labels={"upload_slots": str(draw(st.integers(0, 3)))},
            idc=draw(st.sampled_from(["", "dc1", "dc2"])),
        )
    peers = []
    for i in range(draw(st.integers(1, 10))):
        state = draw(st.sampled_from(_STATES))
        pieces = draw(st.lists(st.integers(0, 15), max_size=8, unique=True))
        if state is PeerState.PENDING:
            pieces = []
        peer = add_peer(
            graph, f"p{i}", f"h{draw(st.integers(0, n_hosts - 1))}", state=state, pieces=pieces, piece_count=16
        )
        peer.upload_costs.extend(draw(st.lists(st.floats(0, 10), max_size=6)))
        peers.append(peer)
    for peer in peers:
        if peer.state in (PeerState.PENDING, PeerState.RUNNING, PeerState.BACK_TO_SOURCE):
            parents = draw(st.lists(st.sampled_from(peers), max_size=3, unique_by=id))
            graph.set_parents(peer, [p for p in parents if p is not peer])
    child = draw(st.sampled_from(peers))
    blocklist = set(draw(st.lists(st.sampled_from([p.id for p in peers] + list(graph.hosts)), max_size=3)))
    limit = draw(st.integers(0, 6))
    return graph, child, blocklist, limit


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(swarms())
def test_candidates_obey_every_filter(swarm):
    graph, child, blocklist, limit = swarm
    chosen = candidate_parents(child, graph, limit=limit, blocklist=blocklist)
    assert len(chosen) <= limit
    assert len({p.id for p in chosen}) == len(chosen)
    for parent in chosen:
        assert parent is not child and parent.host is not child.host
        assert parent.id not in blocklist and parent.host.id not in blocklist
        assert parent.id not in child.blocked_parents
        assert parent.state in (PeerState.TRIGGERED, PeerState.RUNNING, PeerState.BACK_TO_SOURCE, PeerState.SUCCEEDED)
        assert not creates_cycle(parent, child)
        assert parent.has_pieces_missing_from(child) or evaluator.is_feeding_seed(parent)
        assert not parent.host.disable_shared
        assert parent.host.free_upload_slots > 0 or child.id in parent.children
        assert not is_bad_parent(parent.upload_costs)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(swarms())
def test_candidates_are_the_best_scored_usable_parents(swarm):
    graph, child, blocklist, limit = swarm
    usable, excluded = filter_parents(child, blocklist)
    assert {p.id for p in usable}.isdisjoint(excluded)
    assert {p.id for p in usable} | set(excluded) == {p.id for p in child.task.peers.values()} - {child.id}
    ranked = rank_parents(child, usable)
    scores = [c.score for c in ranked]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= c.score <= 1.0 + 1e-9 for c in ranked)
    assert all(0.0 <= v <= 1.0 for c in ranked for v in c.parts.values())
    chosen = candidate_parents(child, graph, limit=limit, blocklist=blocklist)
    assert ids(chosen) == [c.peer.id for c in ranked[:limit]]


# ---- bounded work -------------------------------------------------------------------


def _reference_is_bad(costs):
    """The rule on exact fractions (statistics), as the scheduler computed it before."""
    import statistics

    if len(costs) < evaluator.BAD_MIN_HISTORY + 1:
        return False
    *history, last = costs
    mean = max(statistics.fmean(history), evaluator.BAD_COST_FLOOR)
    if len(history) < evaluator.BAD_NORMAL_HISTORY:
        return last > evaluator.BAD_RATIO * mean
    return last > mean + evaluator.BAD_SIGMAS * statistics.pstdev(history) and last > 2 * mean


@given(st.lists(st.floats(min_value=0, max_value=50), min_size=4, max_size=70), st.floats(0, 500))
def test_float_statistics_give_the_exact_rule_s_verdicts(history, last):
    import statistics

    mean = max(statistics.fmean(history), evaluator.BAD_COST_FLOOR)
    stdev = statistics.pstdev(history)
    limits = [evaluator.BAD_RATIO * mean, mean + evaluator.BAD_SIGMAS * stdev, 2 * mean]
    if any(abs(last - limit) <= 1e-9 * max(1.0, limit) for limit in limits):
        return  # on a threshold to within rounding: either verdict is right
    assert is_bad_parent([*history, last]) == _reference_is_bad([*history, last])


def _finished_swarm(graph, n, task_id="big"):
    for i in range(n):
        add_peer(graph, f"f{i}", f"fh{i}", task_id, state=PeerState.SUCCEEDED, pieces=4, piece_count=4)


def test_a_decision_examines_a_bounded_sample_of_the_peers_that_can_serve(graph, monkeypatch):
    _finished_swarm(graph, 2000)
    for i in range(500):
        add_peer(graph, f"pending{i}", f"ph{i}", "big")  # never candidates: not in the pool at all
    child = add_peer(graph, "child", "me", "big")
    examined = []
    real = evaluator.exclusion

    def counting(parent, *args, **kwargs):
        examined.append(parent)
        return real(parent, *args, **kwargs)

    monkeypatch.setattr(evaluator, "exclusion", counting)
    hint = graph.peer("f1999")
    chosen = candidate_parents(child, graph, sample=15, extra=[hint])
    assert len(chosen) == 4 and len(examined) <= 16
    assert hint in examined and all(p.state is PeerState.SUCCEEDED for p in examined)
    examined.clear()
    assert len(candidate_parents(child, graph, sample=0)) == 4 and len(examined) == 2000  # 0: the whole pool


def test_hints_no_longer_in_the_pool_are_ignored(graph):
    _finished_swarm(graph, 3)
    child = add_peer(graph, "child", "me", "big")
    gone = graph.peer("f0")
    graph.leave_peer(gone)
    assert gone not in evaluator.draw_candidates(child, 15, [gone])


def test_the_cycle_walk_runs_only_for_a_peer_with_children(graph, monkeypatch):
    chain = [add_peer(graph, f"c{i}", f"ch{i}", "chain", state=PeerState.RUNNING, pieces=[i]) for i in range(300)]
    for parent, child in zip(chain, chain[1:], strict=False):
        graph.set_parents(child, [parent])
    walks = []
    real = evaluator.Descendants

    def counting(peer, *args):
        walks.append(peer.id)
        return real(peer, *args)

    monkeypatch.setattr(evaluator, "Descendants", counting)
    newcomer = add_peer(graph, "new", "nh", "chain")
    assert len(candidate_parents(newcomer, graph, sample=0, limit=300)) == 300 and walks == []
    # The head of the chain rescheduling: every other link downloads from it, directly or not.
    assert candidate_parents(chain[0], graph, sample=0) == [] and walks == ["c0"]
    assert set(ids(candidate_parents(chain[150], graph, sample=0, limit=300))) == {f"c{i}" for i in range(150)}


def test_past_the_walk_limit_peers_that_have_parents_count_as_cycles(graph, monkeypatch):
    monkeypatch.setattr(evaluator, "CYCLE_WALK_LIMIT", 5)
    root = add_peer(graph, "root", "rh", state=PeerState.RUNNING, pieces=[0])
    for i in range(10):
        graph.set_parents(add_peer(graph, f"d{i}", f"dh{i}", state=PeerState.RUNNING, pieces=[i + 1]), [root])
    source = add_peer(graph, "source", "sh", state=PeerState.BACK_TO_SOURCE, pieces=[5, 6])
    unrelated = add_peer(graph, "other", "oh", state=PeerState.RUNNING, pieces=[7])
    graph.set_parents(unrelated, [source])
    descendants = evaluator.Descendants(root)
    assert not descendants.complete and len(descendants.found) > 5
    # Conservative: a peer with parents may be a descendant; one without cannot be.
    assert exclusion(unrelated, root, descendants=descendants) == "cycle"
    assert exclusion(source, root, descendants=descendants) is None
    assert not creates_cycle(unrelated, root)  # the exact walk, for comparison


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_the_graph_stays_acyclic_and_the_cycle_check_is_exact_under_random_changes(seed):
    """Random registrations, decisions, reschedules, finishes, failures and departures: after each
    decision the task has no cycle (brute force), and for the peer that decided, the decision's
    cycle check (lazy, set by set, skipping candidates without parents) agrees with the exact
    walk for every peer of the task."""
    import random

    rng = random.Random(seed)
    graph = make_graph(FakeClock())
    live = []
    for step in range(150):
        roll = rng.random()
        running = [p for p in live if p.state in (PeerState.RUNNING, PeerState.BACK_TO_SOURCE)]
        if roll < 0.35 or not running:
            state = PeerState.BACK_TO_SOURCE if rng.random() < 0.1 or not live else PeerState.RUNNING
            peer = add_peer(graph, f"p{step}", f"h{step}", state=state, pieces=rng.sample(range(32), 3))
            live.append(peer)
            if state is PeerState.BACK_TO_SOURCE:
                continue
        elif roll < 0.8:
            peer = rng.choice(running)  # reschedules: drops its parents, keeps its children
            graph.clear_parents(peer)
        elif roll < 0.9:
            peer = rng.choice(running)
            if rng.random() < 0.5:
                graph.peer_finished(peer, content_length=32 * (4 << 20), piece_count=32)
            else:
                graph.peer_failed(peer)
                live.remove(peer)
            continue
        else:
            peer = rng.choice(live)
            graph.leave_peer(peer)
            live.remove(peer)
            continue
        descendants = evaluator.Descendants(peer, limit=10**6)
        for other in peer.task.peers.values():
            if other is not peer:
                assert descendants.may_contain(other) == creates_cycle(other, peer), (other, peer)
        graph.set_parents(peer, candidate_parents(peer, graph, limit=rng.randint(1, 4), sample=rng.choice([0, 15])))
        assert graph.index_problems() == []
        for p in peer.task.peers.values():
            assert all(not creates_cycle(p, q) for q in p.children.values()), "a cycle"
