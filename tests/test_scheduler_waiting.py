"""Which waiting peers a change wakes (dffs.scheduler.waiting) and the offers the graph notes: pure, no sockets."""

from __future__ import annotations

import pytest

from dffs.scheduler.resource import Offer, PeerState
from dffs.scheduler.testing import FakeClock, add_host, add_peer, make_graph
from dffs.scheduler.waiting import WaitingRoom, can_help


@pytest.fixture
def graph():
    return make_graph(FakeClock(), collect_offers=True)


def waiters(graph, room, n, task_id="task", **peer_options):
    """``n`` pending peers of the task on their own hosts, waiting; returns (peers, woken list, hints per peer)."""
    peers, woken, hints = [], [], {}
    for i in range(n):
        peer = add_peer(graph, f"w{i}", f"wh{i}", task_id, **peer_options)
        hints[peer.id] = []
        room.add(peer, lambda peer=peer: woken.append(peer.id), hints[peer.id])
        peers.append(peer)
    graph.take_offers()
    return peers, woken, hints


def test_a_new_server_wakes_its_free_slots_shared_by_the_parents_each_takes(graph):
    room = WaitingRoom()
    add_host(graph, "src", labels={"upload_slots": "10"})
    source = add_peer(graph, "src", "src", state=PeerState.BACK_TO_SOURCE)
    _, woken, hints = waiters(graph, room, 20)
    graph.piece_finished(source, 0)
    (offer,) = graph.take_offers()
    assert offer == Offer(source.task, 10, source)  # its free slots
    assert room.offer(offer, share=4) == [graph.peer(f"w{i}") for i in range(3)]  # ceil(10 / 4), oldest first
    assert woken == ["w0", "w1", "w2"] and hints["w0"] == [source] and hints["w5"] == []
    assert [p.id for p in room.waiting(source.task)][:2] == ["w3", "w4"] and len(room) == 17


def test_a_later_piece_wakes_only_waiters_it_makes_the_server_useful_to(graph):
    room = WaitingRoom()
    server = add_peer(graph, "s", "sh", state=PeerState.RUNNING, pieces=[0, 1])
    fresh, woken, _ = waiters(graph, room, 1)  # holds nothing: could use the server before
    tail = add_peer(graph, "tail", "th", state=PeerState.RUNNING, pieces=[0, 1])  # lacks only what comes next
    room.add(tail, lambda: woken.append("tail"), [])
    graph.take_offers()
    graph.piece_finished(server, 2)
    (offer,) = graph.take_offers()
    assert offer.piece == 2 and offer.budget == 1
    assert not can_help(offer, fresh[0]) and can_help(offer, tail)
    room.offer(offer)
    assert woken == ["tail"] and fresh[0] in room


def test_servers_do_not_wake_waiters_on_their_host_or_that_blocked_them(graph):
    room = WaitingRoom()
    source = add_peer(graph, "src", "shared-host", state=PeerState.BACK_TO_SOURCE)
    woken = []
    same_host = add_peer(graph, "same", "shared-host")
    blocked = add_peer(graph, "blk", "bh")
    graph.block_parents(blocked, ["src"])
    fine = add_peer(graph, "fine", "fh")
    for peer in (same_host, blocked, fine):
        room.add(peer, lambda peer=peer: woken.append(peer.id), [])
    graph.take_offers()
    graph.piece_finished(source, 0)
    for offer in graph.take_offers():
        room.offer(offer)
    assert woken == ["fine"] and same_host in room and blocked in room


def test_freed_slots_and_gone_peers_make_offers(graph):
    room = WaitingRoom()
    add_host(graph, "busy", labels={"upload_slots": "1"})
    busy = add_peer(graph, "busy", "busy", state=PeerState.SUCCEEDED, pieces=4)
    child = add_peer(graph, "child", "ch", state=PeerState.RUNNING)
    graph.set_parents(child, [busy])
    assert busy.host.free_upload_slots == 0
    _, woken, _ = waiters(graph, room, 3)
    graph.peer_failed(child)  # the slot comes back, and one peer fewer is downloading
    offers = graph.take_offers()
    assert Offer(busy.task, 1, busy) in offers and Offer(busy.task, 1) in offers
    for offer in offers:
        room.offer(offer)
    assert woken == ["w0", "w1"]


def test_messages_that_cannot_help_make_no_offer(graph):
    source = add_peer(graph, "src", "sh", state=PeerState.BACK_TO_SOURCE, pieces=1)
    child = add_peer(graph, "c", "ch")
    graph.take_offers()
    graph.register_peer("newcomer", add_host(graph, "nh").id, "task", url="http://origin/task")
    graph.peer_started(child)  # running, but nothing to give yet
    graph.piece_failed(child, 0, parent_id="src", temporary=True)
    assert graph.take_offers() == []
    graph.piece_finished(child, 0, parent_id="src")  # its first piece: it can serve now
    assert graph.take_offers() == [Offer(child.task, child.host.free_upload_slots, child)]
    assert source.host.upload_count == 1


def test_a_new_seed_host_is_offered_to_every_waiting_task(graph):
    room = WaitingRoom()
    woken = []
    for task_id in ("t1", "t2"):
        for i in range(2):
            peer = add_peer(graph, f"{task_id}-{i}", f"{task_id}-h{i}", task_id)
            room.add(peer, lambda peer=peer: woken.append(peer.id), [])
    graph.take_offers()
    add_host(graph, "seed", seed=True)
    (offer,) = graph.take_offers()
    assert offer.task is None and offer.server is None
    room.offer(offer)
    assert sorted(woken) == ["t1-0", "t2-0"]
    add_host(graph, "seed", seed=True)  # announced again: nothing new
    assert graph.take_offers() == []


def test_scan_limit_bounds_the_work_of_one_offer(graph):
    room = WaitingRoom(scan_limit=5)
    source = add_peer(graph, "src", "sh", state=PeerState.BACK_TO_SOURCE)
    peers, woken, _ = waiters(graph, room, 8, pieces=0)
    # The oldest five hold what the source will have: none can be helped, the scan stops there.
    for peer in peers[:5]:
        graph.peer_back_to_source_started(peer)
        graph.piece_finished(peer, 0)
    graph.take_offers()
    graph.piece_finished(source, 0)
    for offer in graph.take_offers():
        room.offer(offer)
    assert woken == []
    room.scan_limit = 6
    room.offer(Offer(source.task, 1, source))  # the same offer reaches one waiter further
    assert woken == [peers[5].id]


def test_re_added_waiters_go_to_the_back_and_wake_all_empties_the_room(graph):
    room = WaitingRoom()
    peers, woken, _ = waiters(graph, room, 3)
    room.add(peers[0], lambda: woken.append("again"), [])
    assert [p.id for p in room.waiting(peers[0].task)] == ["w1", "w2", "w0"]
    room.discard(peers[1])
    assert room.wake_all() == 2 and sorted(woken) == ["again", "w2"] and len(room) == 0
    assert room.offer(Offer(peers[0].task, 5)) == []
