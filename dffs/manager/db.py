"""Database access: the engine for a URL, the schema (SQLAlchemy Core tables) and
migrations (Alembic, scripts in ``migrations/``, applied on every start).

Timestamps are stored as float seconds since the epoch: the same on SQLite and
PostgreSQL, and compared with plain arithmetic by the expiry sweep.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from dffs.errors import DffsError, UsageError

log = logging.getLogger("dffs.manager")

MIGRATIONS = Path(__file__).parent / "migrations"

metadata = sa.MetaData()

clusters = sa.Table(
    "clusters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


def _member_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("ip", sa.String(64), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("idc", sa.String(255), nullable=False, default=""),
        sa.Column("location", sa.String(1024), nullable=False, default=""),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_keepalive", sa.Float, nullable=False),
        sa.Column("cluster_id", sa.Integer, sa.ForeignKey("clusters.id"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    ]


schedulers = sa.Table(
    "schedulers",
    metadata,
    *_member_columns(),
    sa.UniqueConstraint("hostname", "ip", "cluster_id", name="uq_schedulers_member"),
)

seed_peers = sa.Table(
    "seed_peers",
    metadata,
    *_member_columns(),
    sa.Column("download_port", sa.Integer, nullable=False),
    sa.Column("type", sa.Integer, nullable=False),
    sa.UniqueConstraint("hostname", "ip", "cluster_id", name="uq_seed_peers_member"),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("scope", sa.String(32), nullable=False),
    sa.Column("cluster_ids", sa.JSON, nullable=False),
    sa.Column("args", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("results", sa.JSON, nullable=False),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


#: Bearer tokens of the JSON HTTP API, by their SHA-256 (the token itself is shown once, never stored).
api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
)


class DatabaseUnavailable(DffsError):
    """The database cannot be reached or refused the operation."""

    grpc_code = "UNAVAILABLE"


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy URL for a ``--db`` URL; UsageError for anything else."""
    scheme, sep, rest = url.partition("://")
    if not sep or not rest:
        raise UsageError(f"--db must be sqlite:///PATH or postgresql://..., not {url!r}")
    scheme = scheme.lower()
    if scheme == "sqlite":
        return url
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return "postgresql+psycopg://" + rest
    raise UsageError(f"unsupported database URL scheme {scheme!r} in --db (use sqlite:/// or postgresql://)")


def create_engine(url: str, *, connect_timeout: float = 5.0) -> sa.Engine:
    sa_url = sa.make_url(sqlalchemy_url(url))
    if sa_url.get_backend_name() == "sqlite":
        if sa_url.database and sa_url.database != ":memory:":
            try:
                Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailable(
                    f"database unavailable: cannot create {sa_url.database}: {exc.strerror}"
                ) from None
        engine = sa.create_engine(sa_url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    return sa.create_engine(sa_url, pool_pre_ping=True, connect_args={"connect_timeout": max(1, int(connect_timeout))})


def migrate(engine: sa.Engine) -> str:
    """Bring the schema to the newest revision; returns it.  Idempotent."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with guard():
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision() or ""


class guard:
    """Turns database errors into DatabaseUnavailable with a one-line message
    (context manager and decorator)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # A number no column can hold (a uint64 id from a request): SQLite's driver raises
        # OverflowError before the query, PostgreSQL a DataError. The caller's mistake, not an outage.
        if isinstance(exc, OverflowError) or isinstance(exc, sa_exc.DataError):
            detail = str(getattr(exc, "orig", exc) or exc).strip().splitlines()
            raise UsageError(f"a value is out of range for the database: {detail[0] if detail else exc}") from None
        if exc is None or not isinstance(exc, sa_exc.DBAPIError) or isinstance(exc, sa_exc.IntegrityError):
            return False
        detail = str(getattr(exc, "orig", exc) or exc).strip().splitlines()
        first = detail[0] if detail else type(exc).__name__
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            raise DatabaseUnavailable(f"database unavailable: {first}") from None
        raise DatabaseUnavailable(f"database error: {first}") from None

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with guard():
                return fn(*args, **kwargs)

        return wrapper
