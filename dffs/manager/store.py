"""Membership and cluster configuration over the database (synchronous: call it
from a worker thread when on an event loop).

A member (scheduler or seed peer) is identified by (hostname, ip, cluster_id);
registering it again refreshes it.  It is "active" from its last registration
or keepalive until the keepalive TTL passes, or until its KeepAlive stream ends.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from dffs import errors
from dffs.errors import UsageError
from dffs.manager import db
from dffs.manager.config_keys import CONFIG_KEYS, validate_config_patch

ACTIVE = "active"
INACTIVE = "inactive"
DEFAULT_CLUSTER_ID = 1
SCHEDULER = "scheduler"
SEED_PEER = "seed_peer"
_TABLES = {SCHEDULER: db.schedulers, SEED_PEER: db.seed_peers}


class NotFound(errors.NotFound, LookupError):
    """No such member, cluster or job (NOT_FOUND over gRPC, 404 over HTTP)."""


def _row(row) -> dict[str, Any]:
    return dict(row._mapping)


class Store:
    """Clusters, schedulers and seed peers."""

    def __init__(self, engine: sa.Engine, *, keepalive_ttl: float = 30.0) -> None:
        self.engine = engine
        self.keepalive_ttl = keepalive_ttl

    # -- clusters -------------------------------------------------------------

    @db.guard()
    def list_clusters(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(sa.select(db.clusters).order_by(db.clusters.c.id))]

    @db.guard()
    def get_cluster(self, cluster_id: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.clusters).where(db.clusters.c.id == cluster_id)).first()
        if row is None:
            raise NotFound(f"no cluster {cluster_id}")
        return _row(row)

    @db.guard()
    def update_cluster_config(self, cluster_id: int, patch: Any, *, create: bool = True) -> dict[str, Any]:
        """Merges ``patch`` (validated) into the cluster's config; a missing
        cluster is created when ``create``.  A null value removes a key."""
        removals = [k for k, v in patch.items() if v is None] if isinstance(patch, dict) else []
        checked = validate_config_patch({k: v for k, v in patch.items() if v is not None} if removals else patch)
        for key in removals:
            if key not in CONFIG_KEYS or key == "name":
                raise UsageError(f"cannot remove cluster config key {key!r}")
        now = time.time()
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(db.clusters).where(db.clusters.c.id == cluster_id)).first()
            name = checked.pop("name", None)
            if row is None:
                if not create:
                    raise NotFound(f"no cluster {cluster_id}")
                values = {"id": cluster_id, "name": name or f"cluster-{cluster_id}", "config": checked}
                try:
                    conn.execute(sa.insert(db.clusters).values(**values, created_at=now, updated_at=now))
                except sa_exc.IntegrityError:
                    raise UsageError(f"cluster name {values['name']!r} is taken") from None
                if conn.dialect.name == "postgresql":
                    conn.execute(
                        sa.text(
                            "SELECT setval(pg_get_serial_sequence('clusters', 'id'), (SELECT MAX(id) FROM clusters))"
                        )
                    )
            else:
                config = {k: v for k, v in dict(row.config or {}).items() if k not in removals}
                config.update(checked)
                values = {"config": config, "updated_at": now}
                if name:
                    values["name"] = name
                try:
                    conn.execute(sa.update(db.clusters).where(db.clusters.c.id == cluster_id).values(**values))
                except sa_exc.IntegrityError:
                    raise UsageError(f"cluster name {name!r} is taken") from None
        return self.get_cluster(cluster_id)

    # -- members --------------------------------------------------------------

    @db.guard()
    def register(self, kind: str, *, hostname: str, ip: str, port: int, cluster_id: int = 0, **extra: Any) -> dict:
        """Registers or refreshes a member; it is active from now on."""
        if not hostname or not ip:
            raise UsageError("hostname and ip are required")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise UsageError(f"ip {ip!r} is not an IP address") from None
        if not 0 < port < 65536:
            raise UsageError(f"port {port} is out of range")
        cluster_id = cluster_id or DEFAULT_CLUSTER_ID
        table = _TABLES[kind]
        now = time.time()
        key = (table.c.hostname == hostname) & (table.c.ip == ip) & (table.c.cluster_id == cluster_id)
        values = {"port": port, "state": ACTIVE, "last_keepalive": now, "updated_at": now, **extra}
        for attempt in range(2):
            try:
                with self.engine.begin() as conn:
                    if conn.execute(sa.select(db.clusters.c.id).where(db.clusters.c.id == cluster_id)).first() is None:
                        raise UsageError(f"no cluster {cluster_id}")
                    if conn.execute(sa.update(table).where(key).values(**values)).rowcount == 0:
                        conn.execute(
                            sa.insert(table).values(
                                hostname=hostname, ip=ip, cluster_id=cluster_id, created_at=now, **values
                            )
                        )
                    return _row(conn.execute(sa.select(table).where(key)).one())
            except sa_exc.IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _key(self, table, hostname: str, ip: str, cluster_id: int):
        cond = (table.c.hostname == hostname) & (table.c.ip == ip)
        if cluster_id:
            cond &= table.c.cluster_id == cluster_id
        return cond

    @db.guard()
    def keepalive(self, kind: str, hostname: str, ip: str, cluster_id: int = 0) -> bool:
        """Refreshes a registered member; False when there is none."""
        table = _TABLES[kind]
        now = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(table)
                .where(self._key(table, hostname, ip, cluster_id))
                .values(state=ACTIVE, last_keepalive=now, updated_at=now)
            )
            return result.rowcount > 0

    @db.guard()
    def mark_inactive(self, kind: str, hostname: str, ip: str, cluster_id: int = 0) -> None:
        table = _TABLES[kind]
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(table)
                .where(self._key(table, hostname, ip, cluster_id))
                .values(state=INACTIVE, updated_at=time.time())
            )

    @db.guard()
    def expire(self, now: float | None = None) -> int:
        """Marks members silent for longer than the TTL inactive; returns how many."""
        now = time.time() if now is None else now
        deadline = now - self.keepalive_ttl
        count = 0
        with self.engine.begin() as conn:
            for table in _TABLES.values():
                count += conn.execute(
                    sa.update(table)
                    .where((table.c.state == ACTIVE) & (table.c.last_keepalive < deadline))
                    .values(state=INACTIVE, updated_at=now)
                ).rowcount
        return count

    @db.guard()
    def delete(self, kind: str, hostname: str, ip: str, cluster_id: int = 0) -> bool:
        table = _TABLES[kind]
        with self.engine.begin() as conn:
            return conn.execute(sa.delete(table).where(self._key(table, hostname, ip, cluster_id))).rowcount > 0

    @db.guard()
    def get_member(self, kind: str, hostname: str, ip: str, cluster_id: int = 0) -> dict[str, Any]:
        table = _TABLES[kind]
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(table).where(self._key(table, hostname, ip, cluster_id)).order_by(table.c.id)
            ).first()
        if row is None:
            raise NotFound(f"no {kind.replace('_', ' ')} {hostname} ({ip})")
        return _row(row)

    @db.guard()
    def list_members(self, kind: str, *, active_only: bool = False, cluster_id: int = 0) -> list[dict[str, Any]]:
        """Members, oldest first.  ``active_only`` also hides members whose TTL
        has passed but which the sweep has not reached yet."""
        table = _TABLES[kind]
        query = sa.select(table).order_by(table.c.id)
        if active_only:
            query = query.where(
                (table.c.state == ACTIVE) & (table.c.last_keepalive >= time.time() - self.keepalive_ttl)
            )
        if cluster_id:
            query = query.where(table.c.cluster_id == cluster_id)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def ranked_schedulers(self, *, idc: str = "", location: str = "", ip: str = "") -> list[dict[str, Any]]:
        """Active schedulers for a caller, nearest first (see ``rank``)."""
        clusters = {c["id"]: c for c in self.list_clusters()}
        members = self.list_members(SCHEDULER, active_only=True)
        return rank(members, clusters, idc=idc, location=location, ip=ip)


# -- ranking --------------------------------------------------------------------

#: Weights of the parts of a scheduler's closeness to a caller (Dragonfly's
#: searcher weighs the same three signals).
CIDR_WEIGHT, IDC_WEIGHT, LOCATION_WEIGHT = 0.3, 0.4, 0.3
#: Location elements compared ("country|province|city|zone|cluster").
MAX_LOCATION_ELEMENTS = 5


def _split(value: str) -> list[str]:
    return [p.strip() for p in value.split("|") if p.strip()]


def location_affinity(a: str, b: str) -> float:
    """Fraction of the leading "|"-separated elements the two locations share."""
    left, right = _split(a), _split(b)
    if not left or not right:
        return 0.0
    common = 0
    for x, y in zip(left[:MAX_LOCATION_ELEMENTS], right[:MAX_LOCATION_ELEMENTS], strict=False):
        if x != y:
            break
        common += 1
    return common / MAX_LOCATION_ELEMENTS


def _in_cidrs(ip: str, cidrs: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for cidr in cidrs:
        try:
            if address in ipaddress.ip_network(cidr, strict=False):
                return True
        except ValueError:
            continue
    return False


def score(member: dict[str, Any], cluster: dict[str, Any] | None, *, idc: str, location: str, ip: str) -> float:
    config = (cluster or {}).get("config") or {}
    idcs = set(_split(member.get("idc") or "")) | set(config.get("idcs") or [])
    total = 0.0
    if idc and idc in idcs:
        total += IDC_WEIGHT
    total += LOCATION_WEIGHT * max(
        location_affinity(location, member.get("location") or ""),
        location_affinity(location, config.get("location") or ""),
    )
    if ip and _in_cidrs(ip, config.get("cidrs") or []):
        total += CIDR_WEIGHT
    return total


def rank(
    members: list[dict[str, Any]],
    clusters: dict[int, dict[str, Any]],
    *,
    idc: str = "",
    location: str = "",
    ip: str = "",
) -> list[dict[str, Any]]:
    """Members sorted by closeness to the caller (IDC, location prefix, cluster
    CIDRs), best first; ties keep registration order.  Nobody is filtered out:
    a far scheduler is better than none."""
    scored = [
        (score(m, clusters.get(m["cluster_id"]), idc=idc, location=location, ip=ip), i, m)
        for i, m in enumerate(members)
    ]
    scored.sort(key=lambda t: (-t[0], t[1]))
    return [m for _, _, m in scored]
