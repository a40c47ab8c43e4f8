"""Back-to-source policy and the AnnouncePeer protocol core: pure, no sockets."""

from __future__ import annotations

import gc

import pytest
from google.protobuf import duration_pb2

from dffs.api import common_pb2, scheduler_pb2
from dffs.scheduler import policy
from dffs.scheduler.config import SchedulerConfig
from dffs.scheduler.core import SchedulerCore
from dffs.scheduler.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from dffs.scheduler.policy import (
    BackToSource,
    EmptyTask,
    PolicyConfig,
    Refuse,
    Retry,
    TriggerSeed,
    UseParents,
    decide,
)
from dffs.scheduler.resource import Host, Peer, PeerState, Task
from dffs.scheduler.testing import FakeClock, add_host, add_peer, make_graph

MiB = 1 << 20


@pytest.fixture
def graph():
    return make_graph(FakeClock())


# ---- policy.decide ----------------------------------------------------------------


def test_first_peer_without_seed_goes_to_the_origin(graph):
    peer = add_peer(graph, "p", "h1")
    assert decide(peer, graph) == BackToSource("first peer of the task")


def test_peer_with_a_usable_parent_gets_it(graph):
    add_peer(graph, "a", "h1", state=PeerState.BACK_TO_SOURCE, pieces=1)
    peer = add_peer(graph, "p", "h2")
    decision = decide(peer, graph)
    assert isinstance(decision, UseParents) and [p.id for p in decision.parents] == ["a"]


def test_peer_waits_for_a_parent_that_has_no_piece_yet(graph):
    add_peer(graph, "a", "h1", state=PeerState.BACK_TO_SOURCE)
    peer = add_peer(graph, "p", "h2")
    assert isinstance(decide(peer, graph, rounds=0), Retry)
    assert isinstance(decide(peer, graph, rounds=2), Retry)
    assert decide(peer, graph, rounds=3) == BackToSource("no usable parent after 3 rounds")


def test_back_to_source_limit_per_task(graph):
    config = PolicyConfig(back_to_source_limit=2, retry_back_to_source_rounds=1, retry_limit=5)
    add_peer(graph, "a", "h1", state=PeerState.BACK_TO_SOURCE)
    b = add_peer(graph, "b", "h2")
    b.need_back_to_source = True
    peer = add_peer(graph, "p", "h3")
    assert isinstance(decide(peer, graph, rounds=1, config=config), Retry)  # 2 on the origin already
    assert isinstance(decide(peer, graph, rounds=4, config=config), Retry)
    assert isinstance(decide(peer, graph, rounds=5, config=config), BackToSource)  # retry_limit overrides
    graph.peer_failed(graph.peer("a"))
    assert isinstance(decide(peer, graph, rounds=1, config=config), BackToSource)


def test_the_limit_is_lower_when_a_seed_exists(graph):
    config = PolicyConfig(back_to_source_limit=3, back_to_source_limit_with_seed=1, retry_back_to_source_rounds=1)
    seed = add_peer(graph, "seed", add_host(graph, "seedhost", seed=True), state=PeerState.BACK_TO_SOURCE)
    a = add_peer(graph, "a", "h1", state=PeerState.BACK_TO_SOURCE)
    peer = add_peer(graph, "p", "h2")
    graph.block_parents(peer, [seed.id])
    assert isinstance(decide(peer, graph, rounds=1, config=config), Retry)  # a is the 1 allowed
    graph.peer_failed(a)
    assert isinstance(decide(peer, graph, rounds=1, config=config), BackToSource)


def test_a_peer_sent_to_the_origin_is_told_which_of_its_children_hold_pieces_it_lacks(graph):
    """The seed died: p's only piece holder is its own child c (no parent: the graph stays
    acyclic). Sent to the origin, p is told c holds pieces it lacks, so it takes them from c."""
    config = PolicyConfig(retry_back_to_source_rounds=1, back_to_source_limit=1)
    peer = add_peer(graph, "p", "h1", state=PeerState.RUNNING, pieces=[0])
    child = add_peer(graph, "c", "h2", state=PeerState.RUNNING, pieces=[0, 1, 2])
    bare = add_peer(graph, "bare", "h3", state=PeerState.RUNNING, pieces=[0])  # nothing p lacks: no helper
    graph.set_parents(child, [peer])
    graph.set_parents(bare, [peer])
    decision = decide(peer, graph, rounds=1, config=config)
    assert decision == BackToSource("no usable parent after 1 rounds", (child,))
    graph.block_parents(peer, [child.id])
    assert decide(peer, graph, rounds=1, config=config).helpers == ()  # a blocked child is no helper


def test_a_seed_two_children_cannot_reach_counts_gone_until_it_announces_again(graph):
    """A seed that finished the task and died stays a SUCCEEDED peer until its host's TTL. Once two
    hosts report they cannot reach it, it is neither a parent nor a live seed: another seed host
    is triggered. Its next announce (it was alive after all) makes it usable again."""
    dead = add_host(graph, "seed-a", seed=True)
    spare = add_host(graph, "seed-b", seed=True, labels={"upload_slots": "1"})
    seed_peer = add_peer(graph, "s", dead, state=PeerState.SUCCEEDED, pieces=4)
    first = add_peer(graph, "c1", "h1", state=PeerState.RUNNING, pieces=[0])
    second = add_peer(graph, "c2", "h2", state=PeerState.RUNNING, pieces=[1])
    newcomer = add_peer(graph, "n", "h3")
    assert decide(newcomer, graph).parents[0] is seed_peer
    graph.piece_failed(first, 2, parent_id=seed_peer.id, temporary=True, unreachable=True)
    graph.piece_failed(first, 3, parent_id=seed_peer.id, temporary=True, unreachable=True)
    assert seed_peer in decide(newcomer, graph).parents  # one reporter is not enough
    graph.piece_failed(second, 2, parent_id=seed_peer.id, temporary=True, unreachable=False)  # "busy"
    assert seed_peer in decide(newcomer, graph).parents
    graph.piece_failed(second, 3, parent_id=seed_peer.id, temporary=True, unreachable=True)
    assert dead.reported_unreachable
    assert seed_peer not in decide(newcomer, graph).parents
    graph.block_parents(newcomer, [first.id, second.id])
    assert decide(newcomer, graph) == TriggerSeed(spare)
    add_host(graph, "seed-a", seed=True)  # it announces: back
    assert not dead.reported_unreachable
    assert decide(newcomer, graph).parents == (seed_peer,)


def test_seed_is_triggered_for_a_new_task(graph):
    seed_host = add_host(graph, "seedhost", seed=True)
    peer = add_peer(graph, "p", "h1")
    assert decide(peer, graph) == TriggerSeed(seed_host)


def test_seed_not_triggered_when_the_task_has_a_live_seed_peer(graph):
    seed_host = add_host(graph, "seedhost", seed=True)
    peer = add_peer(graph, "p", "h1")
    placeholder = graph.add_triggered_seed(peer.task, seed_host)
    assert decide(peer, graph) == UseParents((placeholder,))
    graph.block_parents(peer, [placeholder.id])
    assert isinstance(decide(peer, graph), Retry)  # no second trigger while one is live


def test_seed_trigger_backoff_after_a_failure(graph):
    clock = graph.clock
    seed_host = add_host(graph, "seedhost", seed=True)
    peer = add_peer(graph, "p", "h1")
    graph.peer_failed(graph.add_triggered_seed(peer.task, seed_host))
    config = PolicyConfig(seed_trigger_backoff=60)
    assert decide(peer, graph, config=config) == BackToSource("first peer of the task")
    clock.advance(61)
    assert decide(peer, graph, config=config) == TriggerSeed(seed_host)


def test_a_failed_seed_is_replaced_by_another_seed_host_at_once(graph):
    """The seed of a task died (its trigger refused, or its stream gone mid-download): the next
    decision triggers another seed host, not the dead one and not after the backoff."""
    clock = graph.clock
    first = add_host(graph, "seed-a", seed=True)
    second = add_host(graph, "seed-b", seed=True)
    peer = add_peer(graph, "p", "h1")
    config = PolicyConfig(seed_trigger_backoff=60)
    assert decide(peer, graph, config=config) == TriggerSeed(first)
    graph.peer_failed(graph.add_triggered_seed(peer.task, first))
    assert decide(peer, graph, config=config) == TriggerSeed(second)
    graph.peer_failed(graph.add_triggered_seed(peer.task, second))
    assert decide(peer, graph, config=config) == BackToSource("first peer of the task")  # both failed
    clock.advance(61)
    assert decide(peer, graph, config=config) == TriggerSeed(first)


def test_best_seed_host_is_chosen(graph):
    add_host(graph, "me", idc="dc2", location="a|b")
    add_host(graph, "seed-far", seed=True, idc="dc1")
    add_host(graph, "seed-near", seed=True, idc="dc2")
    add_host(graph, "seed-full", seed=True, idc="dc2", labels={"upload_slots": "0"})
    add_host(graph, "seed-private", seed=True, idc="dc2", disable_shared=True)
    peer = add_peer(graph, "p", "me")
    assert decide(peer, graph) == TriggerSeed(graph.host("seed-near"))
    assert policy.usable_seed_hosts(graph, peer) == [graph.host("seed-near"), graph.host("seed-far")]


def test_seed_peer_goes_to_the_origin(graph):
    add_host(graph, "seedhost", seed=True)
    add_host(graph, "seed2", seed=True)
    seed_peer = add_peer(graph, "s", "seedhost")
    assert decide(seed_peer, graph) == BackToSource("seed peers fetch from the origin")


def test_empty_task_and_requests(graph):
    done = add_peer(graph, "a", "h1", state=PeerState.BACK_TO_SOURCE)
    graph.peer_finished(done, content_length=0, piece_count=0)
    assert decide(add_peer(graph, "p", "h2"), graph) == EmptyTask()
    asks = add_peer(graph, "q", "h3", task_id="t2", need_back_to_source=True)
    add_peer(graph, "r", "h4", task_id="t2", state=PeerState.SUCCEEDED, pieces=1)
    assert decide(asks, graph) == BackToSource("the download asked for the origin")
    refused = add_peer(graph, "x", "h5", task_id="t3", priority=common_pb2.PRIORITY_LEVEL1)
    assert isinstance(decide(refused, graph), Refuse)


@pytest.mark.parametrize(
    "options",
    [
        {"disable_back_to_source": True},
        {"task_type": common_pb2.TASK_TYPE_PERSISTENT},
        {"priority": common_pb2.PRIORITY_LEVEL2},
    ],
)
def test_no_origin_means_wait_then_refuse(graph, options):
    add_host(graph, "seedhost", seed=True)  # a seed cannot help either: it would need the origin
    peer = add_peer(graph, "p", "h1", **options)
    config = PolicyConfig(retry_limit=4)
    assert isinstance(decide(peer, graph, rounds=3, config=config), Retry)
    assert isinstance(decide(peer, graph, rounds=4, config=config), Refuse)


# ---- SchedulerCore: the protocol over proto messages ----------------------------------


def host_request(host_id, *, seed=False, ip="10.0.0.1", port=4000, download_port=4001, **fields):
    return scheduler_pb2.AnnounceHostRequest(
        host=common_pb2.Host(
            id=host_id,
            type=common_pb2.HOST_TYPE_SEED if seed else common_pb2.HOST_TYPE_NORMAL,
            hostname=host_id,
            ip=ip,
            port=port,
            download_port=download_port,
            **fields,
        )
    )


def announce(host_id, task_id, peer_id, **request):
    return scheduler_pb2.AnnouncePeerRequest(host_id=host_id, task_id=task_id, peer_id=peer_id, **request)


def register(host_id, task_id, peer_id, url="http://origin/file", **download):
    return announce(
        host_id,
        task_id,
        peer_id,
        register_peer_request=scheduler_pb2.RegisterPeerRequest(download=common_pb2.Download(url=url, **download)),
    )


def piece(number, *, parent_id=None, cost=0.05, length=4 * MiB):
    p = common_pb2.Piece(
        number=number,
        offset=number * length,
        length=length,
        digest="blake3:" + f"{number:064x}",  # well formed, the same wherever the piece is reported
        cost=duration_pb2.Duration(nanos=int(cost * 1e9)),
    )
    if parent_id is not None:
        p.parent_id = parent_id
    return p


@pytest.fixture
def core():
    clock = FakeClock()
    core = SchedulerCore(SchedulerConfig(host_ttl=30, seed_trigger_backoff=60), clock=clock)
    core.fake_clock = clock
    return core


def kind(answer):
    return answer.response.WhichOneof("response") if answer.response is not None else None


def test_core_full_flow(core):
    core.announce_host(host_request("h1", ip="10.0.0.1"))
    core.announce_host(host_request("h2", ip="10.0.0.2", idc="dc1"))
    s1 = core.register(register("h1", "t", "p1"))
    answer = core.schedule(s1)
    assert kind(answer) == "need_back_to_source_response"
    assert core.stat_peer(scheduler_pb2.StatPeerRequest(peer_id="p1")).need_back_to_source
    assert not core.handle(s1, announce("h1", "t", "p1", download_peer_back_to_source_started_request={}))
    core.handle(s1, announce("h1", "t", "p1", download_piece_back_to_source_finished_request={"piece": piece(0)}))

    s2 = core.register(register("h2", "t", "p2"))
    answer = core.schedule(s2)
    assert kind(answer) == "normal_task_response"
    (parent,) = answer.response.normal_task_response.candidate_parents
    assert parent.id == "p1" and parent.host.ip == "10.0.0.1"
    assert (parent.host.port, parent.host.download_port) == (4000, 4001)
    assert parent.state == "back_to_source" and parent.task.id == "t"

    core.handle(s2, announce("h2", "t", "p2", download_piece_finished_request={"piece": piece(0, parent_id="p1")}))
    core.handle(s1, announce("h1", "t", "p1", download_piece_back_to_source_finished_request={"piece": piece(1)}))
    core.handle(
        s1,
        announce(
            "h1", "t", "p1", download_peer_back_to_source_finished_request={"content_length": 8 * MiB, "piece_count": 2}
        ),
    )
    core.handle(s2, announce("h2", "t", "p2", download_piece_finished_request={"piece": piece(1, parent_id="p1")}))
    core.handle(
        s2, announce("h2", "t", "p2", download_peer_finished_request={"content_length": 8 * MiB, "piece_count": 2})
    )
    task = core.stat_task(scheduler_pb2.StatTaskRequest(task_id="t"))
    assert task.state == "succeeded" and task.content_length == 8 * MiB and task.piece_count == 2
    assert task.peer_count == 2 and task.has_available_peer and task.piece_length == 4 * MiB
    stat = core.stat_peer(scheduler_pb2.StatPeerRequest(host_id="h2", task_id="t", peer_id="p2"))
    assert stat.state == "succeeded" and [p.number for p in stat.pieces] == [0, 1]
    core.stream_closed(s1)
    core.stream_closed(s2)
    assert core.graph.peer("p1").state is PeerState.SUCCEEDED  # still a parent after its stream ends


def test_core_names_the_pieces_each_helper_holds_that_the_peer_on_the_origin_lacks(core):
    """p2 took piece 0 from p1 and pieces 1-2 elsewhere; p1 (the origin its only source left) is
    told p2 holds 1 and 2, so it waits a moment for p2's announcement of them instead of fetching
    them again."""
    for h in ("h1", "h2"):
        core.announce_host(host_request(h))
    s1 = core.register(register("h1", "t", "p1"))
    assert kind(core.schedule(s1)) == "need_back_to_source_response"
    core.handle(s1, announce("h1", "t", "p1", download_piece_back_to_source_finished_request={"piece": piece(0)}))
    s2 = core.register(register("h2", "t", "p2"))
    assert kind(core.schedule(s2)) == "normal_task_response"
    core.handle(s2, announce("h2", "t", "p2", download_piece_finished_request={"piece": piece(0, parent_id="p1")}))
    for n in (1, 2):
        core.handle(s2, announce("h2", "t", "p2", download_piece_back_to_source_finished_request={"piece": piece(n)}))
    assert core.handle(s1, announce("h1", "t", "p1", reschedule_request={}))
    answer = core.schedule(s1, rounds=core.policy.retry_limit)
    assert kind(answer) == "need_back_to_source_response"
    (helper,) = answer.response.need_back_to_source_response.helpers
    assert helper.id == "p2" and [p.number for p in helper.pieces] == [1, 2]


def test_the_graph_frees_what_it_drops_without_the_cycle_collector(core):
    """dffs.scheduler.heap freezes the long-lived graph so that the collector's full passes skip
    it: sound only because what the graph drops is freed by reference counting alone. With the
    collector off, a swarm is scheduled, reports pieces, finishes, fails and is dropped (its
    hosts expire, then its tasks): no Peer, Host or Task of it is left anywhere."""

    def ours():
        # type(), not isinstance(): the latter asks some foreign objects for __class__ (torch warns)
        mine = (o for o in gc.get_objects() if type(o) in (Peer, Host, Task))
        return [o for o in mine if (o.host.id if type(o) is Peer else o.id).startswith("rc-")]

    gc.collect()
    gc.disable()
    try:
        core.announce_host(host_request("rc-seed", seed=True, ip="10.0.1.1"))
        for n in range(6):
            core.announce_host(host_request(f"rc-h{n}", ip=f"10.0.1.{n + 2}"))
        sessions = []
        for task in ("rc-t", "rc-u"):
            for n in range(6):
                s = core.register(register(f"rc-h{n}", task, f"rc-{task}-p{n}", url=f"http://origin/{task}"))
                sessions.append(s)
                answer = core.schedule(s)
                if kind(answer) == "need_back_to_source_response":
                    report = {"download_piece_back_to_source_finished_request": {"piece": piece(0)}}
                else:
                    parent = answer.response.normal_task_response.candidate_parents[0].id
                    report = {"download_piece_finished_request": {"piece": piece(0, parent_id=parent)}}
                msg = announce(f"rc-h{n}", task, s.peer_id, **report)
                core.handle(s, msg)
                if n % 3 == 0:
                    finished = {"content_length": 4 * MiB, "piece_count": 1}
                    core.handle(s, announce(f"rc-h{n}", task, s.peer_id, download_peer_finished_request=finished))
                elif n % 3 == 1:
                    core.stream_closed(s)  # mid-download: the peer fails
        seeds = [p for p in core.graph.peers.values() if p.host.id == "rc-seed"]
        assert seeds and len(ours()) == 12 + len(seeds) + 7 + 2  # peers, the seed's, hosts, tasks
        del seeds
        del s, answer, msg
        sessions.clear()
        core.fake_clock.advance(core.config.host_ttl + 1)  # every host silent: gone with its peers
        core.gc()
        core.fake_clock.advance(core.config.task_ttl + 1)  # then the tasks, left without peers
        core.gc()
        assert not core.graph.hosts and not core.graph.peers and not core.graph.tasks
        assert ours() == []
    finally:
        gc.enable()


def test_core_seed_trigger(core):
    core.announce_host(host_request("seed", seed=True, ip="10.0.0.9", port=4100))
    core.announce_host(host_request("h1"))
    s = core.register(
        register("h1", "t", "p1", url="http://origin/big", tag="v1", piece_length=8 * MiB, request_header={"x-a": "b"})
    )
    answer = core.schedule(s)
    (parent,) = answer.response.normal_task_response.candidate_parents
    trigger = answer.trigger
    assert trigger is not None and core.triggers[-1] is trigger
    assert (trigger.ip, trigger.port, trigger.host_id) == ("10.0.0.9", 4100, "seed")
    assert trigger.placeholder_id == parent.id and parent.state == "triggered"
    assert parent.host.type == common_pb2.HOST_TYPE_SEED
    d = trigger.download
    assert (d.url, d.tag, d.piece_length, dict(d.request_header)) == ("http://origin/big", "v1", 8 * MiB, {"x-a": "b"})
    # The seed registers: adopted, and sent to the origin.
    seed_session = core.register(register("seed", "t", "seed-peer", url="http://origin/big"))
    assert kind(core.schedule(seed_session)) == "need_back_to_source_response"
    assert core.graph.peer(parent.id).id == "seed-peer"
    # The child reports a piece against the placeholder id it was given.
    core.handle(
        seed_session,
        announce("seed", "t", "seed-peer", download_piece_back_to_source_finished_request={"piece": piece(0)}),
    )
    core.handle(s, announce("h1", "t", "p1", download_piece_finished_request={"piece": piece(0, parent_id=parent.id)}))
    assert core.graph.host("seed").upload_count == 1


def test_core_failed_trigger_falls_back(core):
    core.announce_host(host_request("seed", seed=True))
    core.announce_host(host_request("h1"))
    s = core.register(register("h1", "t", "p1"))
    answer = core.schedule(s)
    core.seed_trigger_failed(answer.trigger, "UNAVAILABLE: connection refused")
    assert core.graph.peer(answer.trigger.placeholder_id).state is PeerState.FAILED
    avoid = [{"id": answer.trigger.placeholder_id}]
    core.handle(s, announce("h1", "t", "p1", reschedule_request={"candidate_parents": avoid}))
    assert kind(core.schedule(s)) == "need_back_to_source_response"


def test_core_reschedule_and_failed_parents(core):
    for h in ("h1", "h2", "h3"):
        core.announce_host(host_request(h))
    sessions = {}
    for h, p in (("h1", "a"), ("h2", "b")):
        sessions[p] = core.register(register(h, "t", p))
        core.graph.peer_back_to_source_started(core.graph.peer(p))
        core.graph.piece_finished(core.graph.peer(p), 0)
    s = core.register(register("h3", "t", "c"))
    parents = [p.id for p in core.schedule(s).response.normal_task_response.candidate_parents]
    assert sorted(parents) == ["a", "b"]
    core.handle(
        s,
        announce(
            "h3", "t", "c", download_piece_failed_request={"piece_number": 0, "parent_id": "a", "temporary": False}
        ),
    )
    assert core.handle(s, announce("h3", "t", "c", reschedule_request={}))
    assert [p.id for p in core.schedule(s).response.normal_task_response.candidate_parents] == ["b"]
    assert core.handle(s, announce("h3", "t", "c", reschedule_request={"candidate_parents": [{"id": "b"}]}))
    assert core.schedule(s).response is None  # nothing left: wait for a round


@pytest.mark.parametrize(
    "request_,error",
    [
        (announce("h1", "t", "p", download_peer_started_request={}), FailedPrecondition),
        (register("", "t", "p"), InvalidArgument),
        (register("h1", "", "p"), InvalidArgument),
        (register("h1", "t", ""), InvalidArgument),
        (register("h1", "t", "p", url=""), InvalidArgument),
        (register("h1", "t", "p" * 600), InvalidArgument),
        (register("h1", "t", "p", piece_length=0), InvalidArgument),
        (register("h1", "t", "p", type=7), InvalidArgument),
        (register("nohost", "t", "p"), NotFound),
        (announce("h1", "t", "p", register_peer_request={}), InvalidArgument),
    ],
)
def test_core_register_rejects(core, request_, error):
    core.announce_host(host_request("h1"))
    with pytest.raises(error):
        core.register(request_)
    assert not core.graph.peers


def test_core_stream_messages_are_checked(core):
    core.announce_host(host_request("h1"))
    s = core.register(register("h1", "t", "p"))
    with pytest.raises(AlreadyExists):
        core.register(register("h1", "t", "p"))
    cases = [
        (announce("h1", "t", "other", download_peer_started_request={}), InvalidArgument),
        (announce("h1", "t2", "p", download_peer_started_request={}), InvalidArgument),
        (announce("h2", "t", "p", download_peer_started_request={}), InvalidArgument),
        (announce("h1", "t", "p"), InvalidArgument),
        (register("h1", "t", "p"), FailedPrecondition),
        (announce("h1", "t", "p", download_piece_back_to_source_finished_request={}), InvalidArgument),
        (announce("h1", "t", "p", download_piece_finished_request={"piece": piece(0)}), InvalidArgument),
        (
            announce("h1", "t", "p", download_piece_back_to_source_finished_request={"piece": piece(1 << 30)}),
            InvalidArgument,
        ),
        (announce("h1", "t", "p", download_piece_finished_request={"piece": piece(0, parent_id="p")}), InvalidArgument),
        (announce("h1", "t", "p", download_piece_failed_request={"piece_number": 0}), InvalidArgument),
        (
            announce("h1", "t", "p", download_peer_finished_request={"content_length": 5, "piece_count": 0}),
            InvalidArgument,
        ),
    ]
    for request_, error in cases:
        with pytest.raises(error):
            core.handle(s, request_)
    bad_cost = piece(0)
    bad_cost.cost.seconds = -5
    with pytest.raises(InvalidArgument):
        core.handle(s, announce("h1", "t", "p", download_piece_back_to_source_finished_request={"piece": bad_cost}))
    assert core.graph.peer("p").finished_count == 0
    core.handle(s, announce("h1", "t", "p", download_peer_failed_request={"description": "boom"}))
    with pytest.raises(FailedPrecondition):
        core.handle(s, announce("h1", "t", "p", download_peer_started_request={}))
    with pytest.raises(FailedPrecondition):
        core.schedule(s)


def test_core_peer_deleted_under_an_open_stream(core):
    core.announce_host(host_request("h1"))
    s = core.register(register("h1", "t", "p"))
    core.delete_host(scheduler_pb2.DeleteHostRequest(host_id="h1"))
    with pytest.raises(NotFound):
        core.handle(s, announce("h1", "t", "p", download_peer_started_request={}))
    core.stream_closed(s)  # harmless


def test_core_stream_closed(core):
    core.announce_host(host_request("h1"))
    core.announce_host(host_request("h2"))
    pending = core.register(register("h1", "t", "p1"))
    core.stream_closed(pending)
    assert "p1" not in core.graph.peers
    running = core.register(register("h2", "t", "p2"))
    core.handle(running, announce("h2", "t", "p2", download_peer_back_to_source_started_request={}))
    core.stream_closed(running)
    assert core.graph.peer("p2").state is PeerState.FAILED


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"ip": "not-an-ip"}, "IP"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"download_port": 0}, "download port"),
        ({"type": 5}, "type"),
    ],
)
def test_core_announce_host_validation(core, fields, match):
    host_fields = dict(ip="10.0.0.1", port=4000, download_port=4001) | fields
    request = scheduler_pb2.AnnounceHostRequest(host=common_pb2.Host(id="h", **host_fields))
    with pytest.raises(InvalidArgument, match=match):
        core.announce_host(request)
    assert not core.graph.hosts


def test_core_announce_host_interval_and_unary_errors(core):
    request = host_request("h", ip="::1")
    request.interval.seconds = 10
    assert core.announce_host(request) is True
    assert core.announce_host(request) is False
    assert core.graph.host("h").ttl == 30
    with pytest.raises(InvalidArgument):
        core.announce_host(scheduler_pb2.AnnounceHostRequest())
    with pytest.raises(NotFound):
        core.stat_task(scheduler_pb2.StatTaskRequest(task_id="nope"))
    with pytest.raises(InvalidArgument):
        core.stat_task(scheduler_pb2.StatTaskRequest())
    with pytest.raises(NotFound):
        core.stat_peer(scheduler_pb2.StatPeerRequest(peer_id="nope"))
    with pytest.raises(NotFound):
        core.delete_peer(scheduler_pb2.DeletePeerRequest(peer_id="nope"))
    with pytest.raises(NotFound):
        core.delete_task(scheduler_pb2.DeleteTaskRequest(host_id="h", task_id="nope"))
    with pytest.raises(NotFound):
        core.delete_host(scheduler_pb2.DeleteHostRequest(host_id="nope"))
    s = core.register(register("h", "t", "p"))
    with pytest.raises(InvalidArgument, match="belongs"):
        core.stat_peer(scheduler_pb2.StatPeerRequest(task_id="other", peer_id="p"))
    core.delete_peer(scheduler_pb2.DeletePeerRequest(host_id="h", task_id="t", peer_id="p"))
    with pytest.raises(NotFound):
        core.schedule(s)


def test_core_gc_host_ttl(core):
    core.announce_host(host_request("h1"))
    core.register(register("h1", "t", "p1"))
    core.fake_clock.advance(31)
    report = core.gc()
    assert report.hosts == ("h1",) and report.peers == ("p1",)
    with pytest.raises(NotFound):
        core.stat_peer(scheduler_pb2.StatPeerRequest(peer_id="p1"))


# ---- bounded time: next rounds, hints, waking ----------------------------------------


def test_retry_names_the_round_its_answer_may_change_by_itself(graph):
    add_peer(graph, "a", "h1", state=PeerState.BACK_TO_SOURCE)  # nothing to give yet
    peer = add_peer(graph, "p", "h2")
    config = PolicyConfig(retry_back_to_source_rounds=3, retry_limit=10, filter_parent_limit=15)
    # Every peer that can serve was examined: only a round threshold (or a change) can help.
    assert decide(peer, graph, rounds=0, config=config) == Retry("no usable parent yet", 3)
    no_origin = add_peer(graph, "q", "h3", disable_back_to_source=True)
    assert decide(no_origin, graph, rounds=4, config=config).next_round == 10
    # More servers than the sample: another draw may find one next round.
    for i in range(20):
        add_peer(graph, f"useless{i}", f"u{i}", state=PeerState.RUNNING, pieces=[0])
    graph.piece_finished(peer, 0, parent_id="useless0")
    assert decide(peer, graph, rounds=1, config=config).next_round == 2


def test_a_hint_is_examined_beside_the_sample(graph):
    for i in range(200):
        add_peer(
            graph,
            f"full{i}",
            add_host(graph, f"fh{i}", labels={"upload_slots": "0"}),
            state=PeerState.SUCCEEDED,
            pieces=2,
        )
    free = add_peer(graph, "free", "freehost", state=PeerState.SUCCEEDED, pieces=2)
    peer = add_peer(graph, "p", "me")
    config = PolicyConfig(filter_parent_limit=1)
    assert decide(peer, graph, config=config, hints=[free]) == UseParents((free,))


def _core_swarm(core, waiting):
    """A source peer with no piece yet and ``waiting`` peers whose decisions said Retry, waiting."""
    core.announce_host(host_request("src", ip="10.0.1.1", labels={"upload_slots": "8"}))
    source = core.register(register("src", "t", "source", need_back_to_source=True))
    assert kind(core.schedule(source)) == "need_back_to_source_response"
    woken, sessions = [], []
    for i in range(waiting):
        core.announce_host(host_request(f"h{i}", ip=f"10.0.2.{i + 1}"))
        s = core.register(register(f"h{i}", "t", f"w{i}"))
        assert core.schedule(s).response is None
        core.wait(s, lambda s=s: woken.append(s.peer_id))
        sessions.append(s)
    return source, sessions, woken


def test_core_wakes_only_the_waiters_a_message_can_help(core):
    source, sessions, woken = _core_swarm(core, 10)
    core.handle(source, announce("src", "t", "source", download_peer_back_to_source_started_request={}))
    core.handle(
        sessions[0],
        announce(
            "h0", "t", "w0", download_piece_failed_request={"piece_number": 0, "parent_id": "source", "temporary": True}
        ),
    )
    assert woken == []  # started, a temporary failure: nothing anyone could use
    core.handle(
        source, announce("src", "t", "source", download_piece_back_to_source_finished_request={"piece": piece(0)})
    )
    assert woken == ["w0", "w1"]  # 8 free slots, 4 parents a decision: two waiters, the oldest
    for s in sessions[:2]:
        core.unwait(s)
        answer = core.schedule(s)  # the woken decision has the source as a hint
        assert [p.id for p in answer.response.normal_task_response.candidate_parents] == ["source"]
    assert len(core.waiting) == 8
    core.handle(
        source, announce("src", "t", "source", download_piece_back_to_source_finished_request={"piece": piece(1)})
    )
    assert woken == ["w0", "w1"]  # its second piece helps no waiter it could not help before


def test_core_config_change_wakes_every_waiter_and_keeps_its_own_sample_size(core):
    _, _, woken = _core_swarm(core, 3)
    from dffs.manager.tunables import SchedulerTunables

    assert core.policy.filter_parent_limit == 15  # Dragonfly's default, from SchedulerConfig
    core.apply_tunables(SchedulerTunables(filter_parent_limit=40))
    assert core.policy.filter_parent_limit == 40
    assert core.wake_all() == 3 and woken == ["w0", "w1", "w2"]
    core.apply_tunables(SchedulerTunables())
    assert core.policy.filter_parent_limit == 15  # unset in the cluster: this scheduler's own


def test_core_parent_messages_carry_no_url_or_headers(core):
    core.announce_host(host_request("h1", ip="10.0.0.1"))
    core.announce_host(host_request("h2", ip="10.0.0.2"))
    s1 = core.register(register("h1", "t", "p1", piece_length=4 * MiB, request_header={"Authorization": "Bearer x"}))
    core.schedule(s1)
    core.handle(s1, announce("h1", "t", "p1", download_piece_back_to_source_finished_request={"piece": piece(0)}))
    s2 = core.register(register("h2", "t", "p2"))
    (parent,) = core.schedule(s2).response.normal_task_response.candidate_parents
    assert parent.task.id == "t" and parent.task.piece_length == 4 * MiB and parent.task.state == "running"
    assert parent.task.url == "" and not parent.task.request_header


# ---- policy.holders (StatTasks holders_per_task) -------------------------------------------


def test_holders_are_complete_peers_on_usable_hosts_other_than_the_askers_free_slots_first(graph):
    import random

    for name in ("busy", "free", "gone", "private", "asker", "running"):
        add_host(graph, name, disable_shared=name == "private")
    for name in ("busy", "free", "gone", "private", "asker"):
        add_peer(graph, f"{name}-peer", name, "small", state=PeerState.SUCCEEDED, pieces=1, piece_count=1)
    add_peer(graph, "running-peer", "running", "small", state=PeerState.BACK_TO_SOURCE)  # no piece yet
    graph.hosts["busy"].upload_used = graph.hosts["busy"].upload_slots
    graph.hosts["gone"].unreachable_reporters.update({"x": 1.0, "y": 1.0})
    task = graph.tasks["small"]
    rng = random.Random(7)
    for _ in range(20):  # every draw: the same verdict
        found = policy.holders(task, graph.hosts["asker"], 3, rng)
        assert [p.id for p in found] == ["free-peer", "busy-peer"]
    assert policy.holders(task, graph.hosts["asker"], 3, rng, blocklist=frozenset({"free"})) == [
        graph.peers["busy-peer"]
    ]
    assert policy.holders(task, graph.hosts["asker"], 0, rng) == []
    big = add_peer(graph, "big-peer", "free", "big", state=PeerState.SUCCEEDED, pieces=2, piece_count=2)
    assert policy.holders(big.task, graph.hosts["asker"], 3, rng) == []  # not one piece: a conversation
