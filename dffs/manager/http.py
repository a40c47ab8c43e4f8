"""The manager's JSON-over-HTTP API (documented in README.md).

A stdlib ``ThreadingHTTPServer`` on its own thread: each request runs on a
thread of its own and calls the synchronous store directly.  JSON in and out;
errors are ``{"error": "..."}`` with 400 (bad input), 401 (no valid bearer
token: every ``/api/`` path needs one, see :mod:`dffs.manager.tokens`), 404
(unknown path or object), 405, 411, 413 or 503 (database unavailable, or too
many connections). A connection that says nothing for ``TIMEOUT`` seconds is
closed; at most ``MAX_CONNECTIONS`` are served at once.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dffs.errors import DffsError, UsageError
from dffs.manager.db import DatabaseUnavailable
from dffs.manager.jobs import JobStore
from dffs.manager.store import SCHEDULER, SEED_PEER, NotFound, Store
from dffs.manager.tokens import ApiTokens

log = logging.getLogger("dffs.manager.http")

MAX_BODY = 1 << 20
#: Seconds a connection may be silent (reading a request line, headers or body).
TIMEOUT = 30.0
#: Connections served at once; beyond it a client gets 503 at once.
MAX_CONNECTIONS = 64


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _member(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("created_at", "updated_at")} | {
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


class Api:
    """Routing and handlers, independent of the HTTP server (testable alone)."""

    ROUTES = [
        ("GET", re.compile(r"^/api/v1/clusters$"), "list_clusters"),
        ("GET", re.compile(r"^/api/v1/clusters/(\d+)$"), "get_cluster"),
        ("PUT", re.compile(r"^/api/v1/clusters/(\d+)/config$"), "put_cluster_config"),
        ("GET", re.compile(r"^/api/v1/schedulers$"), "list_schedulers"),
        ("GET", re.compile(r"^/api/v1/seed-peers$"), "list_seed_peers"),
        ("POST", re.compile(r"^/api/v1/jobs$"), "create_job"),
        ("GET", re.compile(r"^/api/v1/jobs$"), "list_jobs"),
        ("GET", re.compile(r"^/api/v1/jobs/(\d+)$"), "get_job"),
        ("GET", re.compile(r"^/healthy$"), "healthy"),
        ("GET", re.compile(r"^/metrics$"), "metrics"),
    ]

    def __init__(self, store: Store, jobs: JobStore) -> None:
        self.store = store
        self.jobs = jobs

    def handle(self, method: str, target: str, body: bytes | None) -> tuple[int, Any]:
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        allowed = []
        for route_method, pattern, name in self.ROUTES:
            match = pattern.match(parts.path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            try:
                return getattr(self, name)(*match.groups(), query=query, body=body)
            except HttpError as exc:
                return exc.status, {"error": str(exc)}
            except UsageError as exc:
                return 400, {"error": str(exc)}
            except NotFound as exc:
                return 404, {"error": str(exc)}
            except DatabaseUnavailable as exc:
                log.warning("event=database_unavailable error=%r", str(exc))
                return 503, {"error": str(exc)}
            except DffsError as exc:
                return 500, {"error": str(exc)}
        if allowed:
            return 405, {"error": f"method {method} not allowed on {parts.path} (allowed: {', '.join(allowed)})"}
        return 404, {"error": f"no such endpoint: {method} {parts.path}"}

    @staticmethod
    def _json(body: bytes | None) -> Any:
        if not body:
            raise HttpError(400, "request body must be JSON")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpError(400, f"bad JSON: {exc}") from None

    def healthy(self, *, query, body):
        return 200, {"ok": True}

    def metrics(self, *, query, body):
        """Prometheus text: jobs by state and active members, read from the database now."""
        import sqlalchemy as sa
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from dffs.manager import db as manager_db
        from dffs.manager.jobs import STATES
        from dffs.metrics import MANAGER
        from dffs.metrics import manager as metrics

        with self.jobs.engine.connect() as conn:
            counts = dict(
                conn.execute(
                    sa.select(manager_db.jobs.c.state, sa.func.count()).group_by(manager_db.jobs.c.state)
                ).all()
            )
        for state in STATES:
            metrics.jobs.labels(state).set(counts.get(state, 0))
        for kind in (SCHEDULER, SEED_PEER):
            metrics.members.labels(kind).set(len(self.store.list_members(kind, active_only=True)))
        return 200, RawBody(generate_latest(MANAGER), CONTENT_TYPE_LATEST)

    def list_clusters(self, *, query, body):
        return 200, {"clusters": self.store.list_clusters()}

    def get_cluster(self, cluster_id, *, query, body):
        return 200, self.store.get_cluster(int(cluster_id))

    def put_cluster_config(self, cluster_id, *, query, body):
        cluster_id = int(cluster_id)
        if not 0 < cluster_id < 2**31:
            raise HttpError(400, "cluster id out of range")
        return 200, self.store.update_cluster_config(cluster_id, self._json(body))

    def _members(self, kind: str, query: dict[str, str]):
        state = query.get("state", "active")
        if state not in ("active", "all"):
            raise HttpError(400, "state must be active or all")
        return [_member(r) for r in self.store.list_members(kind, active_only=state == "active")]

    def list_schedulers(self, *, query, body):
        return 200, {"schedulers": self._members(SCHEDULER, query)}

    def list_seed_peers(self, *, query, body):
        return 200, {"seed_peers": self._members(SEED_PEER, query)}

    def create_job(self, *, query, body):
        job = self.jobs.create(self._json(body))
        log.info("event=job_created job=%d type=%s scope=%s", job["id"], job["type"], job["scope"])
        return 201, job

    def list_jobs(self, *, query, body):
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            raise HttpError(400, "limit must be an integer") from None
        if not 0 < limit <= 1000:
            raise HttpError(400, "limit must be from 1 to 1000")
        return 200, {"jobs": self.jobs.list(state=query.get("state"), limit=limit)}

    def get_job(self, job_id, *, query, body):
        return 200, self.jobs.get(int(job_id))


class RawBody:
    """A non-JSON answer (the Prometheus text of /metrics)."""

    def __init__(self, data: bytes, content_type: str) -> None:
        self.data = data
        self.content_type = content_type


class _Handler(BaseHTTPRequestHandler):
    server_version = "dffs-manager"
    protocol_version = "HTTP/1.1"
    api: Api  # set on the subclass
    tokens: ApiTokens  # set on the subclass

    def _respond(self, status: int, payload: Any) -> None:
        if isinstance(payload, RawBody):
            data, content_type = payload.data, payload.content_type
        else:
            data, content_type = json.dumps(payload, sort_keys=True).encode() + b"\n", "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _dispatch(self) -> None:
        if urlsplit(self.path).path.startswith("/api/") and not self.tokens.check(self.headers.get("Authorization")):
            log.info("event=http_unauthorized client=%s path=%s", self.client_address[0], urlsplit(self.path).path)
            self.close_connection = True
            return self._respond(401, {"error": "a bearer token is required (printed by dffs manager at first start)"})
        body = None
        if self.command in ("POST", "PUT"):
            length = self.headers.get("Content-Length")
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                return self._respond(411, {"error": "send a Content-Length, not chunked"})
            if length is None:
                self.close_connection = True
                return self._respond(411, {"error": "Content-Length required"})
            try:
                size = int(length)
            except ValueError:
                self.close_connection = True
                return self._respond(400, {"error": "bad Content-Length"})
            if size < 0 or size > MAX_BODY:
                self.close_connection = True
                return self._respond(413, {"error": f"body larger than {MAX_BODY} bytes"})
            body = self.rfile.read(size)
        try:
            status, payload = self.api.handle(self.command, self.path, body)
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("event=http_internal_error path=%s", self.path)
            status, payload = 500, {"error": f"internal error: {type(exc).__name__}"}
        self._respond(status, payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        log.debug("event=http_request client=%s %s", self.client_address[0], format % args)


class _BoundedServer(ThreadingHTTPServer):
    """At most MAX_CONNECTIONS handled at once; the rest get 503 without a thread."""

    daemon_threads = True
    max_connections = MAX_CONNECTIONS

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            body = b'{"error": "too many connections"}\n'
            head = (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            try:
                request.settimeout(1.0)
                request.sendall(head.encode() + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _BoundedServer6(_BoundedServer):
    """For an IPv6 listen address: the stdlib server binds IPv4 unless told otherwise."""

    address_family = socket.AF_INET6


class HttpApiServer:
    """The HTTP API on a daemon thread; ``port`` is known after construction."""

    def __init__(self, address: str, api: Api, tokens: ApiTokens) -> None:
        host, _, port = address.rpartition(":")
        handler = type("Handler", (_Handler,), {"api": api, "tokens": tokens, "timeout": TIMEOUT})
        host = host.strip("[]")
        server_class: type[_BoundedServer] = _BoundedServer6 if ":" in host else _BoundedServer
        try:
            self.httpd = server_class((host, int(port)), handler)
        except OSError as exc:
            raise DffsError(f"manager cannot listen on {address} (HTTP): {exc.strerror or exc}") from None
        self.httpd.daemon_threads = True
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="dffs-manager-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
