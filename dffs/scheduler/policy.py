"""What to answer a peer that asks for parents.  Pure: a function of the graph.

:func:`decide` is called when a peer registers or asks to be rescheduled, and
again after each *round* in which nothing usable turned up (the service waits
``retry_interval``, or less when the task changes, between calls).  It returns
one of:

* :class:`EmptyTask` -- the task is known to have no content;
* :class:`UseParents` -- candidate parents, best first;
* :class:`TriggerSeed` -- no parent yet, but a seed host can fetch the task:
  the service creates a TRIGGERED placeholder peer on that seed, answers with
  it as the parent, and asks the seed daemon to download the task;
* :class:`BackToSource` -- go to the origin;
* :class:`Retry` -- nothing now; ask again after the next round or change;
* :class:`Refuse` -- the download cannot proceed (origin not allowed and no
  parent after ``retry_limit`` rounds, or priority LEVEL1).

Rules, in order:

1. a task known to be empty -> EmptyTask;
2. priority LEVEL1 -> Refuse;
3. the download asked for the origin (``need_back_to_source``) and may use it
   -> BackToSource;
4. usable parents (:mod:`evaluator`: a random sample of ``filter_parent_limit``
   peers that can serve, plus the ``hints`` a waking change offered) -> UseParents;
5. a normal peer, a seed host able to take the task, and the task has no live
   seed peer -> TriggerSeed (best seed by free slots, then IDC/location
   affinity), skipping seed hosts whose seed peer of this task failed in the
   last ``seed_trigger_backoff`` seconds: a dead seed is replaced by another
   at once, and the same one is not asked again before the backoff;
6. a seed peer -> BackToSource (seeds are who goes to the origin);
7. when the origin may be used (not ``disable_back_to_source``, not a
   persistent task, not priority LEVEL2):
   * no other live peer in the task (the first download) -> BackToSource;
   * after ``retry_back_to_source_rounds`` rounds, if fewer than the limit of
     normal peers are on the origin -> BackToSource.  The limit is
     ``back_to_source_limit_with_seed`` when a seed host is in the cluster,
     else ``back_to_source_limit``;
   * after ``retry_limit`` rounds -> BackToSource anyway: the limit protects
     the origin from a stampede, it must not starve a peer forever;
   otherwise, after ``retry_limit`` rounds -> Refuse;
   Every BackToSource past rule 3 names the peer's *helpers*: its children that hold
   pieces it lacks (:func:`helpers`), which it takes from them rather than the origin;
8. otherwise -> Retry, saying at which round the answer may change by itself:
   the next one when the sample did not cover every peer that can serve (a
   new draw may find a parent) or a seed trigger is backed off (time will
   lift it), else the next of ``retry_back_to_source_rounds`` and
   ``retry_limit``.  Anything else that could change the answer is a change
   to the graph, which wakes the peer (:mod:`dffs.scheduler.waiting`), so the
   service need not re-decide at every round.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

import attrs

from dffs.scheduler.evaluator import DEFAULT_WEIGHTS, Weights, candidate_parents, idc_affinity, location_affinity
from dffs.scheduler.resource import LIVE_STATES, Graph, Host, Peer, Task

#: Peers examined per decision by default, as in Dragonfly (``filter_parent_limit``).
DEFAULT_FILTER_PARENT_LIMIT = 15

# common.Priority / common.TaskType values (kept numeric: this module does not import protos).
PRIORITY_LEVEL1 = 1
PRIORITY_LEVEL2 = 2
TASK_TYPE_PERSISTENT = 1


@attrs.frozen
class PolicyConfig:
    candidate_parent_limit: int = 4
    #: Peers examined per decision: a random sample of those that can serve (0: all of them).
    filter_parent_limit: int = DEFAULT_FILTER_PARENT_LIMIT
    back_to_source_limit: int = 3
    back_to_source_limit_with_seed: int = 1
    retry_back_to_source_rounds: int = 3
    retry_limit: int = 10
    seed_trigger_backoff: float = 60.0
    weights: Weights = DEFAULT_WEIGHTS


@attrs.frozen
class EmptyTask:
    pass


@attrs.frozen
class UseParents:
    parents: tuple[Peer, ...]


@attrs.frozen
class TriggerSeed:
    host: Host


@attrs.frozen
class BackToSource:
    reason: str
    #: Children of the peer that hold pieces: they cannot be its parents (the graph stays
    #: acyclic), but a peer on the origin cannot wait on them in a circle, so it takes from them
    #: what they announce and only the rest from the origin (a seed that died mid-task leaves
    #: its pieces spread over children that are each other's descendants).
    helpers: tuple[Peer, ...] = ()


@attrs.frozen
class Retry:
    reason: str
    #: The round at which this answer may change unless a change wakes the
    #: peer first (see :func:`decide`); None: the next one.
    next_round: int | None = None


@attrs.frozen
class Refuse:
    reason: str


Decision = EmptyTask | UseParents | TriggerSeed | BackToSource | Retry | Refuse


def may_use_origin(peer: Peer) -> bool:
    return not (
        peer.disable_back_to_source or peer.task.type == TASK_TYPE_PERSISTENT or peer.priority == PRIORITY_LEVEL2
    )


def usable_seed_hosts(
    graph: Graph, peer: Peer, blocklist: Collection[str] = (), failed: Collection[str] = ()
) -> list[Host]:
    """Seed hosts that could take ``peer``'s task, best first (``failed``: hosts not to ask)."""
    seeds = [
        h
        for h in graph.seed_hosts()
        if h is not peer.host
        and not h.disable_shared
        and h.free_upload_slots > 0
        and h.id not in blocklist
        and h.id not in failed
        and h.port > 0
        and not h.reported_unreachable
    ]
    idc, location = peer.host.effective_idc, peer.host.effective_location

    def key(h: Host) -> tuple[float, float, float, str]:
        return (
            -h.free_upload_slots / max(h.upload_slots, 1),
            -idc_affinity(h.effective_idc, idc),
            -location_affinity(h.effective_location, location),
            h.id,
        )

    return sorted(seeds, key=key)


def recently_failed_seed_hosts(task: Task, now: float, backoff: float) -> set[str]:
    """Seed hosts whose seed peer of ``task`` failed less than ``backoff`` seconds ago (the
    record holds at most one entry per seed host of the cluster)."""
    return {host_id for host_id, at in task.failed_seed_hosts.items() if now - at < backoff}


def helpers(peer: Peer, config: PolicyConfig, blocklist: Collection[str] = ()) -> tuple[Peer, ...]:
    """Children of ``peer`` that could serve it pieces it lacks, most pieces first (see
    :class:`BackToSource`). Bounded: a peer has at most its host's upload slots of children."""
    found = [
        child
        for child in peer.children.values()
        if child in peer.task.servers
        and child.host is not peer.host
        and child.host.id not in blocklist
        and child.id not in peer.blocked_parents
        and child.has_pieces_missing_from(peer)
    ]
    found.sort(key=lambda child: (-child.finished_count, child.id))
    return tuple(found[: config.candidate_parent_limit])


#: Most holders one task's StatTasks answer names.
MAX_HOLDERS = 8


def holders(task: Task, asker: Host | None, k: int, rng: random.Random, blocklist: Collection[str] = ()) -> list[Peer]:
    """Up to ``k`` peers holding the whole one-piece ``task`` that the ``asker``'s host could fetch it
    from without a conversation (StatTasks ``holders_per_task``): complete, on a sharing host other than
    the asker's that no one reported unreachable, not blocked; hosts with free upload slots first, then
    fewer failed uploads, ties at random. A sample of the task's servers is looked at, not all of them,
    so a task held by thousands costs what one held by a few does."""
    if k <= 0 or task.piece_count != 1:
        return []
    found = [
        peer
        for peer in task.servers.sample(4 * k, rng)
        if peer.is_complete
        and peer.host is not asker
        and not peer.host.disable_shared
        and not peer.host.reported_unreachable
        and peer.host.id not in blocklist
        and peer.id not in blocklist
    ]
    rng.shuffle(found)
    found.sort(key=lambda p: (p.host.free_upload_slots <= 0, p.host.upload_failed_count))
    return found[: min(k, MAX_HOLDERS)]


def has_live_seed_peer(peer: Peer) -> bool:
    """A seed peer of the task that is, or will be, of use (one on a host others cannot reach is not)."""
    return any(
        p.state in LIVE_STATES and not p.host.reported_unreachable for p in peer.task.seed_peers() if p is not peer
    )


def decide(
    peer: Peer,
    graph: Graph,
    *,
    rounds: int = 0,
    config: PolicyConfig = PolicyConfig(),
    blocklist: Collection[str] = frozenset(),
    hints: Sequence[Peer] = (),
    rng: random.Random | None = None,
) -> Decision:
    """The answer for ``peer`` after ``rounds`` fruitless rounds (see module docstring).

    ``hints``: peers a change offered to this peer while it waited (examined
    besides the sample).  Bounded work: nothing here walks the task's peers
    or the cluster's hosts.
    """
    task = peer.task
    if task.is_empty:
        return EmptyTask()
    if peer.priority == PRIORITY_LEVEL1:
        return Refuse("priority LEVEL1 refuses downloads")
    origin_ok = may_use_origin(peer)
    if peer.requested_back_to_source and origin_ok:
        return BackToSource("the download asked for the origin")

    parents = candidate_parents(
        peer,
        graph,
        limit=config.candidate_parent_limit,
        blocklist=blocklist,
        weights=config.weights,
        sample=config.filter_parent_limit,
        extra=hints,
        rng=rng,
    )
    if parents:
        return UseParents(tuple(parents))

    backed_off = False
    if not peer.host.is_seed and origin_ok and not has_live_seed_peer(peer):
        failed = recently_failed_seed_hosts(task, graph.clock(), config.seed_trigger_backoff)
        seeds = usable_seed_hosts(graph, peer, blocklist, failed)
        if seeds:
            return TriggerSeed(seeds[0])
        backed_off = bool(failed) and bool(graph.seeds)

    if peer.host.is_seed and origin_ok:
        return BackToSource("seed peers fetch from the origin", helpers(peer, config, blocklist))

    if origin_ok:
        if not task.has_live_peer_off(peer.host):
            return BackToSource("first peer of the task")
        limit = config.back_to_source_limit_with_seed if graph.seeds else config.back_to_source_limit
        if rounds >= config.retry_back_to_source_rounds and task.back_to_source_count(exclude=peer) < limit:
            return BackToSource(f"no usable parent after {rounds} rounds", helpers(peer, config, blocklist))
        if rounds >= config.retry_limit:
            return BackToSource(
                f"no usable parent after {rounds} rounds (origin limit {limit} overridden)",
                helpers(peer, config, blocklist),
            )
    elif rounds >= config.retry_limit:
        return Refuse(f"no usable parent after {rounds} rounds and the origin may not be used")
    sampled = 0 < config.filter_parent_limit < len(task.servers)
    if sampled or backed_off:
        return Retry("no usable parent yet", rounds + 1)
    thresholds = (config.retry_back_to_source_rounds, config.retry_limit) if origin_ok else (config.retry_limit,)
    return Retry("no usable parent yet", min((t for t in thresholds if t > rounds), default=rounds + 1))
