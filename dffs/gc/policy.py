"""The GC's decisions, with no I/O: given what is on disk, what goes.

Rules, in order:

1. **TTL**: a task nobody used for ``task_ttl`` seconds goes whole, unless a
   piece of it is pinned (being read or uploaded) or it is open/busy.
2. **Quota**: when the bytes used plus the bytes about to be written exceed
   the high watermark, pieces go least recently used first until usage is at
   the low watermark (minus the incoming bytes). Pinned pieces and pieces of
   *busy* tasks (a whole-task download in progress) never go. A task left
   with no pieces goes whole unless it is *active* (open by a reader, whose
   handle must stay valid).

The gap between the watermarks is hysteresis: one pass frees a batch, so the
GC does not run on every piece written.

:func:`plan_reclaim` is for a full disk (ENOSPC) below the quota — something
else filled the filesystem: the same least-recently-used order and the same
protections, until a given number of bytes is free.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

from dffs.errors import UsageError


@attrs.frozen
class PieceState:
    number: int
    length: int
    last_access: float


@attrs.frozen
class TaskState:
    task_id: str
    last_access: float
    pieces: tuple[PieceState, ...] = ()
    #: Bytes the task occupies on disk (freed if the whole task goes).
    disk_bytes: int = 0
    pinned: frozenset[int] = frozenset()
    #: Open by a reader or downloader: its pieces may go, the task itself stays.
    active: bool = False
    #: A whole-task download or import is running: nothing of it goes.
    busy: bool = False


@attrs.frozen
class GcLimits:
    #: Disk budget in bytes; 0: no quota (only the TTL applies).
    quota: int = 0
    high: float = 0.8
    low: float = 0.6
    #: Seconds since last access after which a task goes; 0: never.
    task_ttl: float = 0.0

    def __attrs_post_init__(self) -> None:
        if not 0 < self.low <= self.high <= 1:
            raise ValueError(f"watermarks must satisfy 0 < low <= high <= 1, not low={self.low} high={self.high}")
        if self.quota < 0 or self.task_ttl < 0:
            raise ValueError("quota and task TTL must not be negative")

    @property
    def high_bytes(self) -> int:
        return int(self.quota * self.high)

    @property
    def low_bytes(self) -> int:
        return int(self.quota * self.low)


@attrs.frozen
class Plan:
    #: Tasks to delete whole, and why ("ttl" or "quota").
    delete_tasks: tuple[tuple[str, str], ...] = ()
    #: (task id, piece numbers) to evict.
    evict_pieces: tuple[tuple[str, tuple[int, ...]], ...] = ()
    #: Bytes the plan frees (estimated from piece lengths / disk bytes).
    freed: int = 0

    def __bool__(self) -> bool:
        return bool(self.delete_tasks or self.evict_pieces)


def plan(tasks: Iterable[TaskState], *, used: int, limits: GcLimits, now: float, incoming: int = 0) -> Plan:
    """What to evict so that ``used + incoming`` ends at or under the low watermark."""
    tasks = list(tasks)
    deleted: dict[str, str] = {}
    freed = 0
    if limits.task_ttl > 0:
        for task in tasks:
            if now - task.last_access > limits.task_ttl and not task.pinned and not task.active and not task.busy:
                deleted[task.task_id] = "ttl"
                freed += task.disk_bytes
    if limits.quota and used - freed + incoming > limits.high_bytes:
        target = max(0, limits.low_bytes - incoming)
        return _evict_lru(tasks, deleted, freed, until=used - target, reason="quota")
    return _evict_lru(tasks, deleted, freed, until=freed, reason="quota")


def plan_reclaim(tasks: Iterable[TaskState], *, need: int) -> Plan:
    """What to evict to free ``need`` bytes now (the disk is full), least recently used first."""
    return _evict_lru(list(tasks), {}, 0, until=need, reason="disk_full")


def _evict_lru(tasks: list[TaskState], deleted: dict[str, str], freed: int, *, until: int, reason: str) -> Plan:
    """Evict unpinned pieces of tasks that are not busy, oldest access first, until ``freed``
    reaches ``until``; a task left with no pieces goes whole unless it is active."""
    evicted: dict[str, list[int]] = {}
    candidates = sorted(
        (piece.last_access, task.task_id, piece.number, piece.length)
        for task in tasks
        if task.task_id not in deleted and not task.busy
        for piece in task.pieces
        if piece.number not in task.pinned
    )
    for _, task_id, number, length in candidates:
        if freed >= until:
            break
        evicted.setdefault(task_id, []).append(number)
        freed += length
    by_id = {t.task_id: t for t in tasks}
    for task_id, numbers in list(evicted.items()):
        task = by_id[task_id]
        if len(numbers) == len(task.pieces) and not task.active:
            del evicted[task_id]
            deleted[task_id] = reason
            freed += max(0, task.disk_bytes - sum(p.length for p in task.pieces))
    return Plan(
        delete_tasks=tuple(deleted.items()),
        evict_pieces=tuple((tid, tuple(sorted(numbers))) for tid, numbers in evicted.items()),
        freed=freed,
    )


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)b?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_quota(text: str | int | None, filesystem_bytes: int) -> int:
    """``--storage-quota``: bytes (``20GiB``, ``500M``, ``1048576``) or a percentage of the
    data dir's filesystem (``80%``). 0 or empty: no quota. UsageError when malformed."""
    if text is None or text == "" or text == 0:
        return 0
    if isinstance(text, int):
        if text < 0:
            raise UsageError(f"bad --storage-quota {text}: negative")
        return text
    value = str(text).strip()
    if value.endswith("%"):
        try:
            percent = float(value[:-1])
        except ValueError:
            raise UsageError(f"bad --storage-quota {text!r}: expected SIZE or PCT%") from None
        if not 0 < percent <= 100:
            raise UsageError(f"bad --storage-quota {text!r}: a percentage must be in (0, 100]")
        return int(filesystem_bytes * percent / 100)
    match = _SIZE.match(value)
    if not match:
        raise UsageError(f"bad --storage-quota {text!r}: expected SIZE (e.g. 20GiB, 500MB) or PCT%")
    number, unit, binary = match.groups()
    base = 1024 if (binary or unit == "") else 1000
    return int(float(number) * base ** _POWERS[unit.lower()])
