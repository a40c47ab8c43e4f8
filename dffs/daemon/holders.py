"""Who holds a small task, as a scheduler's StatTasks said (pure: parsing and a bounded cache).

:mod:`dffs.daemon.small_tasks` fetches a one-piece task straight from a holder named here; see
there for why. What a scheduler says is bounded like any candidate parent."""

from __future__ import annotations

import collections

import attrs
import trio

from dffs.api import common_pb2, scheduler_pb2
from dffs.daemon.piece_choice import Parent, unusable_parent
from dffs.digest import is_piece_digest

#: Seconds a hint stays usable: a directory listed now is read over the next minutes; a stale hint
#: costs one failed GET to a holder that evicted the task, then the conversation.
HINT_TTL = 300.0
#: Hints kept at most (oldest dropped first): well under 1 KiB each.
MAX_HINTS = 200_000
#: Holders taken from one entry at most.
MAX_HOLDERS = 8


@attrs.frozen
class Hint:
    """Who holds a one-piece task, and what its piece hashes to (from a scheduler's StatTasks)."""

    holders: tuple[Parent, ...]
    piece_digest: str
    content_length: int
    learned_at: float


class HolderHints:
    """Hints by task ID, bounded in number and age."""

    def __init__(self, *, ttl: float = HINT_TTL, limit: int = MAX_HINTS):
        self.ttl = ttl
        self.limit = limit
        self._hints: collections.OrderedDict[str, Hint] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._hints)

    def put(self, task_id: str, hint: Hint) -> None:
        self._hints.pop(task_id, None)
        self._hints[task_id] = hint
        while len(self._hints) > self.limit:
            self._hints.popitem(last=False)

    def take(self, task_id: str) -> Hint | None:
        """The task's hint if it is fresh (and forget it: a task is opened once, then held here)."""
        hint = self._hints.pop(task_id, None)
        if hint is None or trio.current_time() - hint.learned_at > self.ttl:
            return None
        return hint


def parse_holders(
    entry: scheduler_pb2.TaskHolders, task: common_pb2.Task | None, own_host_id: str, now: float
) -> Hint | None:
    """A scheduler's TaskHolders as a hint; None when nothing in it is usable. Checked like any
    candidate parent (:func:`dffs.daemon.piece_choice.unusable_parent`): what a scheduler says is bounded."""
    if task is None or not task.HasField("content_length") or task.piece_count != 1:
        return None
    if not is_piece_digest(entry.piece_digest):
        return None
    holders = []
    for peer in entry.peers[:MAX_HOLDERS]:
        if unusable_parent(peer, own_host_id) is None:
            holders.append(Parent(peer.id, peer.host.ip, peer.host.port, peer.host.download_port))
    if not holders:
        return None
    return Hint(tuple(holders), entry.piece_digest, task.content_length, now)


__all__ = ["Hint", "HolderHints", "parse_holders"]
