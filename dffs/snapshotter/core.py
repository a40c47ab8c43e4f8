"""containerd's snapshot rules over the metadata (no gRPC, no filesystem).

What a call may do is decided here, inside one store transaction; the
servicer maps the errors to gRPC codes and does the filesystem work the
returned rows imply. The rules are containerd's own (its storage package
and overlay snapshotter):

* keys and committed names share one space per namespace;
* a parent must exist (NOT_FOUND) and be committed (INVALID_ARGUMENT);
* only an active snapshot can be committed (FAILED_PRECONDITION), under a
  name not taken (ALREADY_EXISTS); the commit's labels replace the active's;
* mounts exist for active and view snapshots only (FAILED_PRECONDITION);
* a snapshot with children cannot be removed (FAILED_PRECONDITION);
* Update changes labels only: mask ``labels`` replaces them all,
  ``labels.KEY`` sets or (empty value) deletes one key; no mask = all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from dffs.snapshotter import filters as filter_lang
from dffs.snapshotter.store import MetaStore, Row

#: containerd's limit for one label (key + value).
MAX_LABEL_BYTES = 4096
#: The label containerd puts on a layer's Prepare: the chain ID it wants committed.
TARGET_LABEL = "containerd.io/snapshot.ref"
#: The label a remote (lazily mounted) snapshot carries, as stargz-snapshotter's does.
REMOTE_LABEL = "containerd.io/snapshot/remote"


class SnapshotError(Exception):
    """A call containerd made that the rules refuse; ``grpc_code`` is the status it gets (dffs.rpc.status)."""

    grpc_code = "UNKNOWN"


class AlreadyExists(SnapshotError):
    grpc_code = "ALREADY_EXISTS"


class NotFound(SnapshotError):
    grpc_code = "NOT_FOUND"


class FailedPrecondition(SnapshotError):
    grpc_code = "FAILED_PRECONDITION"


class InvalidArgument(SnapshotError):
    grpc_code = "INVALID_ARGUMENT"


@attrs.frozen
class Info:
    name: str
    parent: str
    kind: str
    created: float
    updated: float
    labels: Mapping[str, str]


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if len(key.encode()) + len(value.encode()) > MAX_LABEL_BYTES:
            raise InvalidArgument(f"label {key[:64]!r}: key and value exceed {MAX_LABEL_BYTES} bytes")
    return dict(labels)


class Snapshots:
    def __init__(self, store: MetaStore, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock

    # ------------------------------------------------------------ helpers
    def _get(self, ns: str, key: str) -> Row:
        if not key:
            raise InvalidArgument("a snapshot key is required")
        row = self.store.get(ns, key)
        if row is None:
            raise NotFound(f"snapshot {key!r} does not exist in namespace {ns!r}")
        return row

    def info(self, row: Row) -> Info:
        parent = self.store.by_id(row.parent_id) if row.parent_id is not None else None
        return Info(row.key, parent.key if parent else "", row.kind, row.created, row.updated, dict(row.labels))

    def chain(self, row: Row) -> list[Row]:
        """The snapshot's ancestors, nearest first (the order of overlay's lowerdir)."""
        out = []
        seen = {row.id}
        parent_id = row.parent_id
        while parent_id is not None:
            parent = self.store.by_id(parent_id)
            if parent is None or parent.id in seen:  # the schema forbids both; never loop
                break
            seen.add(parent.id)
            out.append(parent)
            parent_id = parent.parent_id
        return out

    # -------------------------------------------------------------- calls
    def create(self, ns: str, key: str, parent: str, kind: str, labels: Mapping[str, str]) -> Row:
        """Prepare (kind active) or View (kind view)."""
        assert kind in ("active", "view")
        if not key:
            raise InvalidArgument("a snapshot key is required")
        labels = check_labels(labels)
        with self.store.transaction():
            if self.store.get(ns, key) is not None:
                raise AlreadyExists(f"snapshot {key!r} already exists")
            parent_id = None
            if parent:
                parent_row = self.store.get(ns, parent)
                if parent_row is None:
                    raise NotFound(f"parent snapshot {parent!r} does not exist")
                if parent_row.kind != "committed":
                    raise InvalidArgument(f"parent {parent!r} is not a committed snapshot")
                parent_id = parent_row.id
            return self.store.insert(ns, key, parent_id, kind, self.clock(), labels)

    def commit(self, ns: str, name: str, key: str, labels: Mapping[str, str], usage: tuple[int, int]) -> Row:
        if not name:
            raise InvalidArgument("a name to commit under is required")
        labels = check_labels(labels)
        with self.store.transaction():
            row = self._get(ns, key)
            if row.kind != "active":
                raise FailedPrecondition(f"snapshot {key!r} is {row.kind}, not active: only active ones commit")
            if self.store.get(ns, name) is not None:
                raise AlreadyExists(f"snapshot {name!r} already exists")
            row.key, row.kind, row.labels, row.updated = name, "committed", labels, self.clock()
            row.size, row.inodes = usage
            self.store.save(row)
            return row

    def find_remote(self, ns: str, target: str, parent: str) -> Row | None:
        """A committed snapshot for chain ``target`` on ``parent`` (a layer already mounted)."""
        parent_row = self.store.get(ns, parent) if parent else None
        if parent and parent_row is None:
            return None
        parent_id = parent_row.id if parent_row else None
        for row in self.store.all(ns):
            if row.kind == "committed" and row.labels.get(TARGET_LABEL) == target and row.parent_id == parent_id:
                return row
        return None

    def commit_remote(
        self, ns: str, name: str, parent: str, labels: Mapping[str, str], remote: dict, usage: tuple[int, int]
    ) -> Row:
        """Record a lazily mounted layer as committed, as if it had been unpacked."""
        labels = check_labels({**labels, REMOTE_LABEL: "remote snapshot"})
        with self.store.transaction():
            if self.store.get(ns, name) is not None:
                raise AlreadyExists(f"snapshot {name!r} already exists")
            parent_id = None
            if parent:
                parent_row = self.store.get(ns, parent)
                if parent_row is None:
                    raise NotFound(f"parent snapshot {parent!r} does not exist")
                if parent_row.kind != "committed":
                    raise InvalidArgument(f"parent {parent!r} is not a committed snapshot")
                parent_id = parent_row.id
            row = self.store.insert(ns, name, parent_id, "committed", self.clock(), labels, remote)
            row.size, row.inodes = usage
            self.store.save(row)
            return row

    def for_mounts(self, ns: str, key: str) -> Row:
        row = self._get(ns, key)
        if row.kind not in ("active", "view"):
            raise FailedPrecondition(f"snapshot {key!r} is {row.kind}: only active and view snapshots have mounts")
        return row

    def remove(self, ns: str, key: str) -> Row:
        with self.store.transaction():
            row = self._get(ns, key)
            if self.store.children(row.id):
                raise FailedPrecondition(f"snapshot {key!r} has children: remove them first")
            self.store.delete(row.id)
            return row

    def stat(self, ns: str, key: str) -> Info:
        return self.info(self._get(ns, key))

    def usage_row(self, ns: str, key: str) -> Row:
        return self._get(ns, key)

    def update(self, ns: str, name: str, labels: Mapping[str, str], paths: Sequence[str]) -> Info:
        labels = dict(labels)
        with self.store.transaction():
            row = self._get(ns, name)
            if not paths:
                new = labels
            else:
                new = dict(row.labels)
                for path in paths:
                    if path == "labels":
                        new = dict(labels)
                    elif path.startswith("labels."):
                        label = path[len("labels.") :]
                        if labels.get(label):
                            new[label] = labels[label]
                        else:
                            new.pop(label, None)
                    else:
                        raise InvalidArgument(f"cannot update field {path!r}: only labels can change")
            row.labels = check_labels(new)
            row.updated = self.clock()
            self.store.save(row)
            return self.info(row)

    def list(self, ns: str, filter_texts: Iterable[str]) -> list[Info]:
        try:
            parsed = filter_lang.parse_all(list(filter_texts))
        except filter_lang.FilterError as exc:
            raise InvalidArgument(str(exc)) from None
        out = []
        for row in self.store.all(ns):
            info = self.info(row)
            lookup = filter_lang.snapshot_field(info.name, info.parent, info.kind, info.labels)
            if filter_lang.matches_any(parsed, lookup):
                out.append(info)
        return out
