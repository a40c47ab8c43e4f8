"""The manager's database layer on SQLite and PostgreSQL: migrations, membership,
ranking, cluster config, jobs.  Every test runs on both databases."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from dffs.errors import UsageError
from dffs.manager import db
from dffs.manager.jobs import JobStore, validate_job
from dffs.manager.store import SCHEDULER, SEED_PEER, NotFound, Store, location_affinity, rank


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sub/manager.db"
    return request.getfixturevalue("pg_cluster").new_database()


@pytest.fixture
def engine(db_url):
    engine = db.create_engine(db_url)
    db.migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine):
    return Store(engine, keepalive_ttl=30)


def test_migrations_create_schema_from_nothing_and_are_idempotent(db_url):
    engine = db.create_engine(db_url)
    try:
        assert db.migrate(engine) == "0002"
        tables = set(sa.inspect(engine).get_table_names())
        assert {"clusters", "schedulers", "seed_peers", "jobs", "api_tokens", "alembic_version"} <= tables
        JobStore(engine).create({"type": "preheat", "urls": ["http://example.com/a"]})
    finally:
        engine.dispose()
    engine = db.create_engine(db_url)  # a restart: same database, migrate again
    try:
        assert db.migrate(engine) == "0002"
        assert [c["name"] for c in Store(engine).list_clusters()] == ["default"]
        assert len(JobStore(engine).list()) == 1
    finally:
        engine.dispose()


def test_register_refresh_keepalive_and_expire(store):
    s = store.register(SCHEDULER, hostname="s1", ip="10.0.0.1", port=8002, idc="a", location="cn|hz")
    assert s["state"] == "active" and s["cluster_id"] == 1
    again = store.register(SCHEDULER, hostname="s1", ip="10.0.0.1", port=8003, idc="a", location="cn|hz")
    assert again["id"] == s["id"] and again["port"] == 8003
    assert [m["hostname"] for m in store.list_members(SCHEDULER, active_only=True)] == ["s1"]
    assert store.keepalive(SCHEDULER, "s1", "10.0.0.1")
    assert not store.keepalive(SCHEDULER, "nobody", "10.0.0.9")
    # Silent past the TTL: hidden at once, and the sweep marks it inactive.
    assert store.expire(now=time.time() + 31) == 1
    assert store.list_members(SCHEDULER, active_only=True) == []
    assert store.list_members(SCHEDULER)[0]["state"] == "inactive"
    assert store.keepalive(SCHEDULER, "s1", "10.0.0.1")
    assert store.list_members(SCHEDULER, active_only=True)[0]["state"] == "active"
    store.mark_inactive(SCHEDULER, "s1", "10.0.0.1")
    assert store.list_members(SCHEDULER, active_only=True) == []


def test_seed_peers_and_bad_registrations(store):
    p = store.register(SEED_PEER, hostname="seed", ip="10.0.0.2", port=4000, download_port=4001, type=1)
    assert (p["download_port"], p["type"]) == (4001, 1)
    assert store.get_member(SEED_PEER, "seed", "10.0.0.2")["id"] == p["id"]
    with pytest.raises(UsageError, match="not an IP"):
        store.register(SCHEDULER, hostname="x", ip="nope", port=1)
    with pytest.raises(UsageError, match="port"):
        store.register(SCHEDULER, hostname="x", ip="10.0.0.3", port=0)
    with pytest.raises(UsageError, match="no cluster 7"):
        store.register(SCHEDULER, hostname="x", ip="10.0.0.3", port=1, cluster_id=7)
    assert store.delete(SEED_PEER, "seed", "10.0.0.2")
    with pytest.raises(NotFound):
        store.get_member(SEED_PEER, "seed", "10.0.0.2")


def test_ranking_by_idc_location_and_cidr(store):
    store.update_cluster_config(2, {"name": "lab", "cidrs": ["192.168.0.0/16"]})
    store.register(SCHEDULER, hostname="far", ip="10.0.0.1", port=1, idc="x", location="us|ny")
    store.register(SCHEDULER, hostname="city", ip="10.0.0.2", port=1, idc="y", location="cn|zj|hz")
    store.register(SCHEDULER, hostname="idc", ip="10.0.0.3", port=1, idc="idc1|idc2", location="")
    store.register(SCHEDULER, hostname="lab", ip="10.0.0.4", port=1, cluster_id=2)
    names = lambda **kw: [m["hostname"] for m in store.ranked_schedulers(**kw)]  # noqa: E731
    assert names(idc="idc2", location="cn|zj|hz") == ["idc", "city", "far", "lab"]
    assert names(location="cn|zj|nb") == ["city", "far", "idc", "lab"]
    assert names(ip="192.168.3.4")[0] == "lab"
    assert names() == ["far", "city", "idc", "lab"]
    assert location_affinity("a|b|c", "a|b|d") == pytest.approx(0.4)
    assert rank([], {}) == []


def test_cluster_config_validation_and_merge(store):
    c = store.update_cluster_config(1, {"candidate_parent_limit": 6, "blocked_hosts": ["bad"]})
    assert c["config"] == {"candidate_parent_limit": 6, "blocked_hosts": ["bad"]}
    c = store.update_cluster_config(1, {"upload_limit": 1000, "blocked_hosts": None})
    assert c["config"] == {"candidate_parent_limit": 6, "upload_limit": 1000}
    for bad, message in [
        ({"nope": 1}, "unknown cluster config key 'nope'"),
        ({"candidate_parent_limit": "4"}, "candidate_parent_limit must be an integer"),
        ({"gc_high_threshold": 101}, "gc_high_threshold"),
        ({"cidrs": ["10.0.0.0/33"]}, "cidrs"),
        ([1], "JSON object"),
    ]:
        with pytest.raises(UsageError, match=message):
            store.update_cluster_config(1, bad)
    store.update_cluster_config(3, {"name": "three"})
    with pytest.raises(UsageError, match="taken"):
        store.update_cluster_config(4, {"name": "three"})
    assert [c["id"] for c in store.list_clusters()] == [1, 3]
    with pytest.raises(NotFound):
        store.get_cluster(99)


def test_jobs_lifecycle(engine):
    jobs = JobStore(engine)
    a = jobs.create({"type": "preheat", "urls": ["https://example.com/x"], "scope": "all-seeds"})
    b = jobs.create({"type": "preheat", "urls": ["oci://registry:5000/lib/busybox:1.36"], "headers": {"A": "b"}})
    assert (a["state"], a["scope"], b["scope"]) == ("pending", "all-seeds", "seed")
    assert [j["id"] for j in jobs.list()] == [b["id"], a["id"]]
    running = jobs.update(a["id"], "running")
    assert running["state"] == "running"
    done = jobs.update(a["id"], "failed", [{"url": "https://example.com/x", "success": False, "reason": "404"}])
    assert done["results"][0]["reason"] == "404" and done["updated_at"] >= done["created_at"]
    with pytest.raises(UsageError, match="cannot go from failed to running"):
        jobs.update(a["id"], "running")
    assert [j["id"] for j in jobs.list(state="pending")] == [b["id"]]
    with pytest.raises(NotFound):
        jobs.get(12345)
    with pytest.raises(NotFound):
        jobs.update(12345, "running")


@pytest.mark.parametrize(
    "spec, message",
    [
        ([], "JSON object"),
        ({"type": "delete", "urls": ["http://a/b"]}, "job type"),
        ({"type": "preheat", "urls": []}, "non-empty list"),
        ({"type": "preheat", "urls": "http://a/b"}, "non-empty list"),
        ({"type": "preheat", "urls": ["ftp://a/b"]}, "only http"),
        ({"type": "preheat", "urls": ["http:///nohost"]}, "bad URL"),
        ({"type": "preheat", "urls": ["http://a:99999/"]}, "bad URL"),
        ({"type": "preheat", "urls": ["oci://Bad Ref"]}, "OCI reference"),
        ({"type": "preheat", "urls": ["http://a/b"], "scope": "everyone"}, "scope must be one of seed, all-seeds, all"),
        ({"type": "preheat", "urls": ["http://a/b"], "cluster_ids": [0]}, "cluster_ids"),
        ({"type": "preheat", "urls": ["http://a/b"], "extra": 1}, "unknown job field"),
    ],
)
def test_job_validation(spec, message):
    with pytest.raises(UsageError, match=message):
        validate_job(spec)


def test_api_tokens_are_made_once_and_stored_hashed(db_url):
    from dffs.manager.tokens import ApiTokens
    from dffs.scheduler.testing import FakeClock

    engine = db.create_engine(db_url)
    try:
        db.migrate(engine)
        clock = FakeClock()
        tokens = ApiTokens(engine, clock=clock)
        first = tokens.ensure_first()
        assert first and tokens.check(f"Bearer {first}")
        assert ApiTokens(engine).ensure_first() is None  # the next start prints nothing
        stored = [row.token_sha256 for row in engine.connect().execute(sa.select(db.api_tokens))]
        assert first not in stored and len(stored) == 1  # only the digest is kept
        for bad in (None, "", "Bearer", f"Basic {first}", f"Bearer {first}x", "Bearer x"):
            assert not tokens.check(bad)
        later = ApiTokens(engine).create("for CI")
        assert not tokens.check(f"bearer {later}")  # the database is read at most once a second ...
        clock.advance(1.5)
        assert tokens.check(f"bearer {later}")  # ... so another manager's token is learnt soon after
    finally:
        engine.dispose()


def test_numbers_no_column_can_hold_are_usage_errors(store, engine):
    """Found by tests/test_fuzz.py: a GetJob id of 2**64-1 (a uint64 on the wire) raised SQLite's
    OverflowError out of the manager; PostgreSQL's DataError was reported as an outage."""
    jobs = JobStore(engine)
    with pytest.raises(UsageError, match="out of range"):
        jobs.get(2**64 - 1)
    with pytest.raises(UsageError, match="out of range"):
        store.get_member(SCHEDULER, "h", "10.0.0.1", cluster_id=2**64 - 1)
    with pytest.raises(UsageError, match="out of range"):
        store.register(SCHEDULER, hostname="h", ip="10.0.0.1", port=8002, cluster_id=2**64 - 1)
