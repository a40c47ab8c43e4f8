"""Bearer tokens for the manager's JSON HTTP API.

The first time a manager starts on a database without tokens it makes one,
prints it once, and stores only its SHA-256: the database never holds a usable
token, and a token shown in a terminal is the operator's to keep. Every request
to ``/api/`` must carry ``Authorization: Bearer TOKEN``; ``/healthy`` and
``/metrics`` stay open for probes and scrapers (they say nothing a member could
not see).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

import sqlalchemy as sa

from dffs.manager import db


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiTokens:
    def __init__(self, engine: sa.Engine, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.clock = clock
        self._known: frozenset[str] = frozenset()
        self._loaded_at = 0.0

    @db.guard()
    def ensure_first(self) -> str | None:
        """A new token when the database has none yet (to print once); None otherwise."""
        with self.engine.begin() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(db.api_tokens)).scalar_one():
                self._load(conn)
                return None
            token = secrets.token_urlsafe(32)
            conn.execute(
                db.api_tokens.insert().values(
                    token_sha256=_digest(token), description="made at first start", created_at=time.time()
                )
            )
            self._load(conn)
            return token

    @db.guard()
    def create(self, description: str = "") -> str:
        token = secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(
                db.api_tokens.insert().values(
                    token_sha256=_digest(token), description=description, created_at=time.time()
                )
            )
            self._load(conn)
        return token

    def _load(self, conn: sa.Connection) -> None:
        self._known = frozenset(conn.execute(sa.select(db.api_tokens.c.token_sha256)).scalars())
        self._loaded_at = self.clock()

    def _reload(self) -> None:
        """Tokens another manager on the same database made (at most once a second)."""
        if self.clock() - self._loaded_at < 1.0:
            return
        try:
            with db.guard(), self.engine.connect() as conn:
                self._load(conn)
        except db.DatabaseUnavailable:
            self._loaded_at = self.clock()

    def check(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries one of the tokens (constant time per token)."""
        if not authorization:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        presented = _digest(token.strip())
        if any(hmac.compare_digest(presented, known) for known in self._known):
            return True
        self._reload()
        return any(hmac.compare_digest(presented, known) for known in self._known)
