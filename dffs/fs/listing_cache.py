"""Directory listings kept on disk, so a remounted dataset is not listed again (and stays listable
while its origin is down).

One SQLite file in the data dir (``listings.sqlite``): per directory URL, when it was
listed (wall clock, so the age survives a restart) and its entries. The mount uses a
stored listing younger than ``metadata_ttl`` as if it had just fetched it, and an older
one only when the origin cannot be reached. A listing is data from outside: what is
read back is checked like a fresh listing (the namespace does that), and a damaged
file is replaced rather than trusted or fatal.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

from dffs.source import ListEntry

log = logging.getLogger(__name__)

#: Listings larger than this are not kept (a 100,000-entry directory is ~10 MB of JSON).
MAX_STORED_BYTES = 64 << 20


class ListingCache:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()  # calls come from trio's worker threads
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS listings (url TEXT PRIMARY KEY, listed_at REAL, entries TEXT)")
            return db
        except sqlite3.DatabaseError as exc:
            log.warning("event=listing_cache_reset path=%s error=%s", self.path, exc)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("CREATE TABLE listings (url TEXT PRIMARY KEY, listed_at REAL, entries TEXT)")
            return db

    def get(self, url: str) -> tuple[float, list[ListEntry]] | None:
        """(age in seconds, entries) of the stored listing of ``url``, or None."""
        try:
            with self._lock:
                row = self._db.execute("SELECT listed_at, entries FROM listings WHERE url = ?", (url,)).fetchone()
            if row is None:
                return None
            listed_at, text = row
            entries = [
                ListEntry(name, u, bool(d), size, mtime, etag) for name, u, d, size, mtime, etag in json.loads(text)
            ]
        except (sqlite3.DatabaseError, ValueError, TypeError) as exc:
            log.warning("event=listing_cache_unreadable url=%s error=%s", url, exc)
            return None
        return max(0.0, time.time() - float(listed_at)), entries

    def put(self, url: str, entries: list[ListEntry]) -> None:
        text = json.dumps([[e.name, e.url, e.is_dir, e.size, e.mtime, e.etag] for e in entries])
        if len(text) > MAX_STORED_BYTES:
            return
        try:
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO listings (url, listed_at, entries) VALUES (?, ?, ?)",
                    (url, time.time(), text),
                )
        except sqlite3.DatabaseError as exc:
            log.warning("event=listing_cache_write_failed url=%s error=%s", url, exc)

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = ["ListingCache"]
