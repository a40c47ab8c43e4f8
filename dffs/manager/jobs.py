"""Preheat jobs: validation of a job request, and the job table.

``dffs.manager.preheat`` executes them: it claims a pending job and moves it
along with ``JobStore.update(job_id, state, results)``:
pending -> running -> succeeded | failed.
"""

from __future__ import annotations

import builtins
import re
import time
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from dffs.errors import UsageError
from dffs.manager import db
from dffs.manager.store import NotFound

PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"
STATES = (PENDING, RUNNING, SUCCEEDED, FAILED)
#: Allowed state moves; a finished job stays finished.
TRANSITIONS = {
    PENDING: {RUNNING, SUCCEEDED, FAILED},
    RUNNING: {RUNNING, SUCCEEDED, FAILED},
    SUCCEEDED: set(),
    FAILED: set(),
}
TYPES = ("preheat",)
SCOPES = ("seed", "all-seeds", "all")
MAX_URLS = 1000
DEFAULT_LIMIT = 100
_OCI_REF = re.compile(
    r"^oci://[A-Za-z0-9.-]+(:[0-9]+)?/[a-z0-9]+([._/-][a-z0-9]+)*(:[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})$"
)


def check_url(url: Any) -> str:
    if not isinstance(url, str) or not url:
        raise UsageError("each url must be a non-empty string")
    if url.startswith("oci://"):
        if not _OCI_REF.match(url):
            raise UsageError(f"bad OCI reference {url!r} (want oci://REGISTRY/REPO:TAG or @sha256:DIGEST)")
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise UsageError(f"bad URL {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"bad URL {url!r}: only http(s):// URLs and oci:// references can be preheated")
    if any(c.isspace() for c in url):
        raise UsageError(f"bad URL {url!r}: contains whitespace")
    return url


def validate_job(spec: Any) -> dict[str, Any]:
    """A job request as stored; UsageError says what is wrong.

    Keys: type ("preheat"), urls (list), scope (seed | all-seeds | all,
    default seed), cluster_ids (list of ints, default every cluster), and
    optional tag, application, headers (object of strings), platform, and
    recursive (true: each http(s) URL is a directory whose whole tree is preheated).
    """
    if not isinstance(spec, dict):
        raise UsageError("job must be a JSON object")
    known = {
        "type",
        "urls",
        "scope",
        "cluster_ids",
        "tag",
        "application",
        "headers",
        "platform",
        "piece_length",
        "recursive",
    }
    unknown = sorted(set(spec) - known)
    if unknown:
        raise UsageError(f"unknown job field {unknown[0]!r}")
    job_type = spec.get("type")
    if job_type not in TYPES:
        raise UsageError(f"job type must be one of {', '.join(TYPES)}, not {job_type!r}")
    scope = spec.get("scope", "seed")
    if scope not in SCOPES:
        raise UsageError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    urls = spec.get("urls")
    if not isinstance(urls, list) or not urls:
        raise UsageError("urls must be a non-empty list")
    if len(urls) > MAX_URLS:
        raise UsageError(f"at most {MAX_URLS} urls per job")
    urls = [check_url(u) for u in urls]
    cluster_ids = spec.get("cluster_ids", [])
    if not isinstance(cluster_ids, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in cluster_ids
    ):
        raise UsageError("cluster_ids must be a list of positive integers")
    args: dict[str, Any] = {"urls": urls}
    for key in ("tag", "application", "platform"):
        if key in spec:
            if not isinstance(spec[key], str):
                raise UsageError(f"{key} must be a string")
            args[key] = spec[key]
    if "headers" in spec:
        headers = spec["headers"]
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise UsageError("headers must be an object of strings")
        args["headers"] = headers
    if "recursive" in spec:
        if not isinstance(spec["recursive"], bool):
            raise UsageError("recursive must be true or false")
        if spec["recursive"]:
            for url in urls:
                if not url.startswith("oci://") and not urlsplit(url).path.endswith("/"):
                    raise UsageError(f"a recursive preheat needs directory URLs ending with '/', not {url!r}")
            args["recursive"] = True
    if "piece_length" in spec:
        pl = spec["piece_length"]
        if isinstance(pl, bool) or not isinstance(pl, int) or pl <= 0:
            raise UsageError("piece_length must be a positive integer")
        args["piece_length"] = pl
    return {"type": job_type, "scope": scope, "cluster_ids": cluster_ids, "args": args}


def _job(row) -> dict[str, Any]:
    return dict(row._mapping)


class JobStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    @db.guard()
    def create(self, spec: Any) -> dict[str, Any]:
        job = validate_job(spec)
        now = time.time()
        with self.engine.begin() as conn:
            job_id = conn.execute(
                sa.insert(db.jobs)
                .values(**job, state=PENDING, results=[], description="", created_at=now, updated_at=now)
                .returning(db.jobs.c.id)
            ).scalar_one()
        return self.get(job_id)

    @db.guard()
    def get(self, job_id: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.jobs).where(db.jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return _job(row)

    @db.guard()
    def list(self, *, state: str | None = None, job_type: str | None = None, limit: int = DEFAULT_LIMIT) -> list[dict]:
        """Most recent first."""
        if state is not None and state not in STATES:
            raise UsageError(f"state must be one of {', '.join(STATES)}, not {state!r}")
        query = sa.select(db.jobs).order_by(db.jobs.c.id.desc()).limit(limit or DEFAULT_LIMIT)
        if state:
            query = query.where(db.jobs.c.state == state)
        if job_type:
            query = query.where(db.jobs.c.type == job_type)
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(query)]

    @db.guard()
    def claim(self, job_id: int) -> bool:
        """pending -> running if nobody else did it first (one executor per job)."""
        with self.engine.begin() as conn:
            claimed = conn.execute(
                sa.update(db.jobs)
                .where((db.jobs.c.id == job_id) & (db.jobs.c.state == PENDING))
                .values(state=RUNNING, updated_at=time.time())
            ).rowcount
        return claimed == 1

    @db.guard()
    def update(
        # builtins.list: in this class ``list`` is the method above.
        self,
        job_id: int,
        state: str,
        results: builtins.list[dict[str, Any]] | None = None,
        description: str = "",
    ) -> dict[str, Any]:
        """Moves a job to ``state`` and stores per-URL/host ``results``
        (e.g. ``[{"url": ..., "hostname": ..., "success": false, "reason": "404"}]``)."""
        if state not in STATES:
            raise UsageError(f"state must be one of {', '.join(STATES)}, not {state!r}")
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(db.jobs).where(db.jobs.c.id == job_id).with_for_update()).first()
            if row is None:
                raise NotFound(f"no job {job_id}")
            if state not in TRANSITIONS[row.state]:
                raise UsageError(f"job {job_id} cannot go from {row.state} to {state}")
            values: dict[str, Any] = {"state": state, "updated_at": time.time()}
            if results is not None:
                values["results"] = list(results)
            if description:
                values["description"] = description
            conn.execute(sa.update(db.jobs).where(db.jobs.c.id == job_id).values(**values))
        return self.get(job_id)
