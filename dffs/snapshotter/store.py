"""Snapshot metadata in SQLite: crash-safe (WAL, full sync), one transaction per API call.

A snapshot's row is written before its directory exists and deleted before
its directory is, so after a crash the database never names a directory
that is gone: at worst a directory without a row remains, which ``Cleanup``
(and the start-up sweep) removes.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs

KINDS = ("view", "active", "committed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    parent_id INTEGER REFERENCES snapshots(id),
    kind TEXT NOT NULL CHECK (kind IN ('view', 'active', 'committed')),
    created REAL NOT NULL,
    updated REAL NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    -- a lazily served layer: the JSON of its LayerSource (None: an ordinary directory)
    remote TEXT,
    -- bytes and inodes of a committed snapshot, measured once at commit
    size INTEGER,
    inodes INTEGER,
    UNIQUE (ns, key)
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
"""


@attrs.define
class Row:
    id: int
    ns: str
    key: str
    parent_id: int | None
    kind: str
    created: float
    updated: float
    labels: dict[str, str]
    remote: dict | None = None
    size: int | None = None
    inodes: int | None = None


def _row(values: tuple) -> Row:
    (id_, ns, key, parent_id, kind, created, updated, labels, remote, size, inodes) = values
    return Row(
        id_, ns, key, parent_id, kind, created, updated, json.loads(labels), json.loads(remote) if remote else None,
        size, inodes,
    )  # fmt: skip


_COLUMNS = "id, ns, key, parent_id, kind, created, updated, labels, remote, size, inodes"


class MetaStore:
    """The snapshot table. Thread-safe: the gRPC servicer calls it from worker threads."""

    def __init__(self, path: Path | str):
        self.path = str(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[MetaStore]:
        """One atomic change: committed on success, rolled back on any exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------ reads
    def get(self, ns: str, key: str) -> Row | None:
        with self._lock:
            found = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE ns=? AND key=?", (ns, key)).fetchone()
        return _row(found) if found else None

    def by_id(self, id_: int) -> Row | None:
        with self._lock:
            found = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE id=?", (id_,)).fetchone()
        return _row(found) if found else None

    def children(self, id_: int) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM snapshots WHERE parent_id=?", (id_,)).fetchone()[0])

    def all(self, ns: str | None = None) -> list[Row]:
        with self._lock:
            if ns is None:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots ORDER BY id").fetchall()
            else:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE ns=? ORDER BY id", (ns,)).fetchall()
        return [_row(r) for r in rows]

    def ids(self) -> set[int]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT id FROM snapshots")}

    # ----------------------------------------------------------- writes
    def insert(
        self,
        ns: str,
        key: str,
        parent_id: int | None,
        kind: str,
        now: float,
        labels: dict[str, str],
        remote: dict | None = None,
    ) -> Row:
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO snapshots (ns, key, parent_id, kind, created, updated, labels, remote)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ns, key, parent_id, kind, now, now, json.dumps(labels), json.dumps(remote) if remote else None),
            )
            row = self.by_id(int(cursor.lastrowid or 0))
        assert row is not None
        return row

    def save(self, row: Row) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE snapshots SET key=?, kind=?, updated=?, labels=?, remote=?, size=?, inodes=? WHERE id=?",
                (
                    row.key,
                    row.kind,
                    row.updated,
                    json.dumps(row.labels),
                    json.dumps(row.remote) if row.remote else None,
                    row.size,
                    row.inodes,
                    row.id,
                ),
            )

    def delete(self, id_: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM snapshots WHERE id=?", (id_,))
