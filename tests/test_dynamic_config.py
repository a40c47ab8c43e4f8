"""The cluster's dynamic config as members read it, and what the scheduler does with it (pure, no sockets)."""

from __future__ import annotations

import json

from dffs.api import manager_pb2
from dffs.idgen import host_id
from dffs.manager.tunables import ClientTunables, SchedulerTunables, client_tunables, scheduler_tunables
from dffs.scheduler import policy
from dffs.scheduler.core import SchedulerCore
from dffs.scheduler.resource import PeerState
from dffs.scheduler.testing import FakeClock, add_host, add_peer


def test_scheduler_and_client_keys_are_split_and_validated():
    text = json.dumps(
        {
            "candidate_parent_limit": 6,
            "blocked_hosts": ["h1"],
            "upload_limit": 5,
            "gc_high_threshold": 90,
            "future_key": 1,
        }
    )
    assert scheduler_tunables(text) == (
        SchedulerTunables(candidate_parent_limit=6, blocked_hosts=frozenset({"h1"})),
        [],
    )
    assert client_tunables(text) == (ClientTunables(upload_limit=5, gc_high_threshold=90), [])


def test_bad_values_are_ignored_and_named():
    tunables, problems = scheduler_tunables(json.dumps({"candidate_parent_limit": 0, "blocked_hosts": ["ok"]}))
    assert tunables == SchedulerTunables(blocked_hosts=frozenset({"ok"}))
    assert problems == ["candidate_parent_limit must be an integer from 1 to 1000, not 0"]
    assert client_tunables("{not json")[0] == ClientTunables()
    assert client_tunables("{not json")[1][0].startswith("config is not JSON")
    assert client_tunables("[]") == (ClientTunables(), ["config is not a JSON object"])
    assert client_tunables("") == (ClientTunables(), [])


def _core_with_two_parents():
    core = SchedulerCore(clock=FakeClock())
    graph = core.graph
    add_peer(graph, "parent-a", add_host(graph, "host-a"), state=PeerState.SUCCEEDED, pieces=4, piece_count=4)
    add_peer(graph, "parent-b", add_host(graph, "host-b"), state=PeerState.SUCCEEDED, pieces=4, piece_count=4)
    child = add_peer(graph, "child", add_host(graph, "host-c"), piece_count=4)
    return core, child


def test_candidate_limit_and_blocked_hosts_change_answers_without_restart():
    core, child = _core_with_two_parents()
    decide = lambda: policy.decide(child, core.graph, config=core.policy, blocklist=core.blocklist())  # noqa: E731
    assert {p.id for p in decide().parents} == {"parent-a", "parent-b"}
    assert core.apply_tunables(SchedulerTunables(candidate_parent_limit=1))
    assert len(decide().parents) == 1
    assert not core.apply_tunables(SchedulerTunables(candidate_parent_limit=1))  # nothing new
    assert core.apply_tunables(SchedulerTunables(blocked_hosts=frozenset({"host-a"})))
    assert [p.id for p in decide().parents] == ["parent-b"]  # limit back to the default, host-a blocked
    core.apply_tunables(SchedulerTunables(blocked_hosts=frozenset({"host-a", "host-b"})))
    assert not isinstance(decide(), policy.UseParents)
    core.apply_tunables(SchedulerTunables())
    assert {p.id for p in decide().parents} == {"parent-a", "parent-b"}


def test_filter_parent_limit_samples_the_task_peers():
    core, child = _core_with_two_parents()
    core.apply_tunables(SchedulerTunables(filter_parent_limit=1))
    for _ in range(20):
        assert len(policy.decide(child, core.graph, config=core.policy).parents) == 1


def test_seeds_learned_from_the_manager_and_their_own_announcement_wins():
    core = SchedulerCore(clock=FakeClock())
    seed = manager_pb2.SeedPeer(hostname="s1", ip="10.0.0.5", port=65000, download_port=4000, idc="x")
    assert core.learn_seed_peers([seed], interval=10) == [host_id("10.0.0.5", "s1", True)]
    host = core.graph.hosts[host_id("10.0.0.5", "s1", True)]
    assert host.is_seed and (host.port, host.download_port, host.idc) == (65000, 4000, "x")
    assert core.learn_seed_peers([seed], interval=10) == []  # refreshed, not new
    # The seed daemon announces itself: from now on the manager's copy does not overwrite it.
    from dffs.api import common_pb2, scheduler_pb2

    core.announce_host(
        scheduler_pb2.AnnounceHostRequest(
            host=common_pb2.Host(
                id=host.id,
                type=common_pb2.HOST_TYPE_SEED,
                hostname="s1",
                ip="10.0.0.5",
                port=65000,
                download_port=4000,
                idc="own",
            )
        )
    )
    core.learn_seed_peers([seed], interval=10)
    assert core.graph.hosts[host.id].idc == "own"
    # A malformed entry is skipped, not fatal.
    assert core.learn_seed_peers([manager_pb2.SeedPeer(hostname="bad", ip="not-an-ip", port=1)], 10) == []
