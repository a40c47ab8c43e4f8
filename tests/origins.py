"""Real HTTP origins for tests, with exact accounting of what the origin sent.

Two kinds:

* :class:`NginxOrigin` runs a real nginx (Debian's build) as a subprocess with a
  config of its own in a temp dir: it serves a directory with sendfile,
  autoindex, ETag/Last-Modified and keep-alive, and writes a JSON access log whose
  ``$body_bytes_sent`` says exactly how many body bytes went out per request.
* :class:`FaultyOrigin` is an HTTP/1.1 server written here on plain sockets and
  threads, serving in-memory bodies, that can misbehave on purpose per path
  (see :class:`Behavior`) and counts every body byte it wrote to a socket.

Neither depends on the ``dffs`` package: they are the ground truth its tests
compare against.
"""

from __future__ import annotations

import dataclasses
import email.utils
import fcntl
import hashlib
import http
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import termios
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AccessEntry",
    "Behavior",
    "FaultyOrigin",
    "FaultyRequest",
    "NginxOrigin",
    "OriginError",
    "free_port",
    "write_random_file",
]

NGINX_BINARY = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_DIR_PREFIX = "dffs-nginx-"
#: Path of :meth:`NginxOrigin.sync_log`'s sentinel requests; they never show in ``requests()``.
SENTINEL_PREFIX = "/.dffs-log-sentinel/"


class OriginError(RuntimeError):
    """An origin failed to start or stop."""


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago (bind to 0, read, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def write_random_file(path: str | os.PathLike, size: int, seed: int = 0) -> str:
    """Write ``size`` pseudo-random bytes (deterministic per ``seed``) to ``path``.

    Parent directories are created. Returns the sha256 hex digest of the content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    digest = hashlib.sha256()
    chunk = 1 << 20
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            data = rng.randbytes(n)
            f.write(data)
            digest.update(data)
            left -= n
    return digest.hexdigest()


def _poll(fetch, n: int, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if len(got) >= n:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(got)} of {n} requests after {timeout}s: {got}")
        time.sleep(0.002)


async def _apoll(fetch, n: int, timeout: float) -> list:
    import trio

    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if len(got) >= n:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(got)} of {n} requests after {timeout}s: {got}")
        await trio.sleep(0.002)


# --------------------------------------------------------------------------- #
# nginx
# --------------------------------------------------------------------------- #

# One JSON object per line; escape=json makes every value a valid JSON string.
_LOG_FIELDS = {
    "method": "$request_method",
    "uri": "$request_uri",
    "status": "$status",
    "body_bytes": "$body_bytes_sent",
    "bytes_sent": "$bytes_sent",
    "range": "$http_range",
    "if_none_match": "$http_if_none_match",
    "if_range": "$http_if_range",
    "request_time": "$request_time",
    "completion": "$request_completion",
    "connection": "$connection",
    "connection_requests": "$connection_requests",
    "msec": "$msec",
    "client": "$remote_addr",
}
_LOG_FORMAT = "{" + ",".join(f'"{k}":"{v}"' for k, v in _LOG_FIELDS.items()) + "}"


@dataclass(frozen=True)
class AccessEntry:
    """One line of an :class:`NginxOrigin` access log.

    ``path`` and ``query`` are the request target as the client sent it (not
    percent-decoded), split at the first ``?``; ``query`` is ``""`` when there
    was none. Header fields are ``None`` when the header was absent (nginx logs
    an absent and an empty header alike). ``body_bytes`` is ``$body_bytes_sent``:
    body bytes nginx wrote to the socket for this request (0 for HEAD and 304),
    ``bytes_sent`` counts headers too. ``completed`` is False when the client
    went away before the whole response was sent. ``client`` is the address the
    request came from (which host, in a namespace cluster).
    """

    method: str
    path: str
    query: str
    status: int
    body_bytes: int
    range: str | None
    if_none_match: str | None
    if_range: str | None
    request_time: float
    uri: str = ""
    bytes_sent: int = 0
    completed: bool = True
    connection: int = 0
    connection_requests: int = 0
    time: float = 0.0
    client: str = ""

    @classmethod
    def parse(cls, line: str) -> AccessEntry:
        d = json.loads(line)
        uri = d["uri"]
        path, _, query = uri.partition("?")

        def opt(key: str) -> str | None:
            return d[key] or None

        def num(key: str, conv=int, default=0):
            try:
                return conv(d[key])
            except (ValueError, KeyError):
                return default

        return cls(
            method=d["method"],
            path=path,
            query=query,
            status=num("status"),
            body_bytes=num("body_bytes"),
            range=opt("range"),
            if_none_match=opt("if_none_match"),
            if_range=opt("if_range"),
            request_time=num("request_time", float, 0.0),
            uri=uri,
            bytes_sent=num("bytes_sent"),
            completed=d["completion"] == "OK",
            connection=num("connection"),
            connection_requests=num("connection_requests"),
            time=num("msec", float, 0.0),
            client=d.get("client", ""),
        )


def _same_path(logged: str, wanted: str) -> bool:
    if logged == wanted:
        return True
    return urllib.parse.unquote(logged) == urllib.parse.unquote(wanted)


def _quote_conf(value: str) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class NginxOrigin:
    """A real nginx serving ``root`` over HTTP/1.1.

    ``with NginxOrigin(root) as origin:`` starts it (waiting until it accepts
    connections) and on exit stops it and removes its temp dir. ``port=None``
    picks a free port once; later ``start()`` calls reuse it. With ``netns`` the
    process runs under ``ip netns exec NETNS`` and ``host`` should be an address
    inside that namespace.

    nginx runs as a single process (``master_process off``) by default, so
    :meth:`kill` leaves nothing serving behind; pass ``master_process=True`` for
    a master plus ``workers`` worker processes (then ``user root`` is set so
    workers can read root-only test dirs). Everything nginx writes (pid, logs,
    temp files) stays in :attr:`workdir`.
    """

    #: Every NginxOrigin made in this process (for leak checks: ``processes()``).
    instances: list[NginxOrigin] = []

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        netns: str | None = None,
        limit_rate: str | int | None = None,
        extra_locations: str = "",
        master_process: bool = False,
        workers: int = 1,
        workdir: str | os.PathLike | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.root = Path(root).resolve()
        self.host = host
        self._fixed_port = port is not None
        self.port: int = port if port is not None else 0
        self.netns = netns
        self.limit_rate = limit_rate
        self.extra_locations = extra_locations
        self.master_process = master_process
        self.workers = workers
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=NGINX_DIR_PREFIX)).resolve()
        self._sessions: list[int] = []  # session ids (= leader pids) of every start
        NginxOrigin.instances.append(self)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.workdir / "nginx.conf"
        self.pid_path = self.workdir / "nginx.pid"
        self.access_log_path = self.workdir / "access.log"
        self.error_log_path = self.workdir / "error.log"
        self.output_path = self.workdir / "nginx.out"
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._read_pos = 0  # bytes of access.log already parsed (always at a line end)
        self._entries: list[AccessEntry] = []
        self._first = 0  # index into _entries of the first entry since clear_log()
        self._sentinels: set[str] = set()  # sync_log() tokens seen in the log

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> NginxOrigin:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NginxOrigin {self.base_url} root={self.root} workdir={self.workdir}>"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def base_url(self) -> str:
        return f"http://{_host_for_url(self.host)}:{self.port}"

    def url(self, path: str = "/") -> str:
        """``http://HOST:PORT/path`` (``path`` used as given, with one leading /)."""
        return f"{self.base_url}/{path.lstrip('/')}"

    def _config(self) -> str:
        w = self.workdir
        tmp = w / "tmp"
        lines = [
            "daemon off;",
            f"master_process {'on' if self.master_process else 'off'};",
            f"worker_processes {self.workers};",
        ]
        if self.master_process and os.geteuid() == 0:
            lines.append("user root;")
        lines += [
            f"pid {_quote_conf(self.pid_path)};",
            f"lock_file {_quote_conf(w / 'nginx.lock')};",
            f"error_log {_quote_conf(self.error_log_path)} info;",
            "events { worker_connections 1024; }",
            "http {",
            "    types { text/html html htm; text/plain txt; application/json json; }",
            "    default_type application/octet-stream;",
            f"    client_body_temp_path {_quote_conf(tmp / 'body')};",
            f"    proxy_temp_path {_quote_conf(tmp / 'proxy')};",
            f"    fastcgi_temp_path {_quote_conf(tmp / 'fastcgi')};",
            f"    uwsgi_temp_path {_quote_conf(tmp / 'uwsgi')};",
            f"    scgi_temp_path {_quote_conf(tmp / 'scgi')};",
            f"    log_format dffs escape=json '{_LOG_FORMAT}';",
            f"    access_log {_quote_conf(self.access_log_path)} dffs;",
            "    sendfile on;",
            "    tcp_nopush on;",
            "    keepalive_timeout 75s;",
            "    keepalive_requests 100000;",
            "    server {",
            f"        listen {_host_for_url(self.host)}:{self.port};",
            "        server_name _;",
            f"        root {_quote_conf(self.root)};",
            "        autoindex on;",
        ]
        if self.limit_rate is not None:
            lines.append(f"        limit_rate {self.limit_rate};")
        if self.extra_locations:
            lines.append(self.extra_locations)
        lines += ["    }", "}", ""]
        return "\n".join(lines)

    def start(self) -> None:
        """Start nginx and wait until it accepts connections (idempotent)."""
        if self.running:
            return
        attempts = 1 if (self._fixed_port or self.port) else 5
        for attempt in range(attempts):
            if not self.port:
                self.port = free_port(self.host)
            try:
                self._start_once()
                self._fixed_port = True  # restarts keep this port
                return
            except OriginError as e:
                if attempt + 1 < attempts and "Address already in use" in str(e):
                    self.port = 0
                    continue
                raise

    def _start_once(self) -> None:
        self.conf_path.write_text(self._config())
        (self.workdir / "tmp").mkdir(exist_ok=True)
        try:
            self.pid_path.unlink()
        except FileNotFoundError:
            pass
        err_start = self.error_log_path.stat().st_size if self.error_log_path.exists() else 0
        cmd = [NGINX_BINARY, "-p", f"{self.workdir}/", "-c", str(self.conf_path), "-e", str(self.error_log_path)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        with open(self.output_path, "ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # own process group: kill() takes workers too
            )
        self._sessions.append(self._proc.pid)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._proc = None
                raise OriginError(
                    f"nginx exited with {rc} while starting on {self.host}:{self.port}\n" + self._diagnostics(err_start)
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise OriginError(
                    f"nginx did not accept connections on {self.host}:{self.port} "
                    f"within {self.start_timeout}s\n" + self._diagnostics(err_start)
                )
            time.sleep(0.005)

    def _ready(self) -> bool:
        # nginx writes its pid file after its listening sockets exist, so the pid
        # file alone is the signal inside a netns we cannot connect into.
        # (Removed before each start, so any pid in it is this run's; a wrapper
        # such as strace may make it differ from our child's pid.)
        try:
            if int(self.pid_path.read_text().strip() or 0) <= 0:
                return False
        except (OSError, ValueError):
            return False
        if self.netns:
            return True
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    def _diagnostics(self, err_start: int = 0) -> str:
        parts = []
        for label, p, off in (("error.log", self.error_log_path, err_start), ("output", self.output_path, 0)):
            try:
                with open(p, "rb") as f:
                    f.seek(off)
                    text = f.read().decode(errors="replace").strip()
            except OSError:
                text = ""
            if text:
                parts.append(f"--- nginx {label} ---\n{text[-8000:]}")
        parts.append(f"--- config {self.conf_path} ---\n{self._config()}")
        return "\n".join(parts)

    def error_log(self) -> str:
        try:
            return self.error_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _signal_group(self, sig: int) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 5.0) -> None:
        """Fast shutdown (SIGTERM, open connections are closed); SIGKILL if slow."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._proc.wait(timeout)
        # Workers (master_process on) might outlive the master briefly.
        self._signal_group(signal.SIGKILL)
        self._proc = None
        self._wait_gone()

    def kill(self) -> None:
        """SIGKILL nginx and all its processes at once: the origin "dies"."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self._proc.wait(10)
        self._proc = None
        self._wait_gone()

    def _wait_gone(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while pids := self.processes():
            if time.monotonic() > deadline:
                raise OriginError(f"nginx processes {pids} of {self.workdir} won't die")
            time.sleep(0.005)

    def close(self) -> None:
        """Stop and remove the temp dir (when this object created it)."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def processes(self) -> list[int]:
        """Pids of live processes of this origin, from any of its starts.

        Worker processes (``master_process=True``) are titled just "nginx:
        worker process", so besides ``pgrep -f WORKDIR`` this looks for members
        of the sessions nginx was started in. Zombies are left out: on this
        machine PID 1 reaps orphans only about once a second.
        """
        needle = (str(self.workdir) + "/").encode()
        sessions = set(self._sessions)
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            state, session = fields[0], int(fields[3])
            if state in (b"Z", b"X"):
                continue
            if session in sessions or needle in cmdline:
                pids.append(int(name))
        return sorted(pids)

    # -- access log --------------------------------------------------------

    def _refresh(self) -> None:
        try:
            f = open(self.access_log_path, "rb")
        except FileNotFoundError:
            return
        with f:
            f.seek(self._read_pos)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return  # nothing, or only a line still being written
        for raw in data[: end + 1].splitlines():
            if raw.strip():
                entry = AccessEntry.parse(raw.decode("utf-8", "surrogateescape"))
                if entry.path.startswith(SENTINEL_PREFIX):
                    self._sentinels.add(entry.path[len(SENTINEL_PREFIX) :])
                else:
                    self._entries.append(entry)
        self._read_pos += end + 1

    def requests(
        self, path: str | None = None, method: str | None = None, *, client: str | None = None
    ) -> list[AccessEntry]:
        """Access-log entries written since start or the last :meth:`clear_log`.

        The log may lag behind what clients already received: call :meth:`sync_log`
        before counting what a finished download cost.
        """
        with self._lock:
            self._refresh()
            entries = self._entries[self._first :]
        return [
            e
            for e in entries
            if (path is None or _same_path(e.path, path))
            and (method is None or e.method == method.upper())
            and (client is None or e.client == client)
        ]

    def body_bytes(self, path: str | None = None, method: str | None = None, *, client: str | None = None) -> int:
        """Sum of ``$body_bytes_sent`` over :meth:`requests` matching the filters."""
        return sum(e.body_bytes for e in self.requests(path, method, client=client))

    def sync_log(self, timeout: float = 10.0) -> None:
        """Return once every request nginx finished before this call is in the access log.

        nginx writes a request's line when it finalizes the request, which a
        client that already holds the whole response can overtake: a count read
        right after a download may miss its last request. So this sends a sentinel
        request (a unique path: a 404) and waits for *its* line. nginx runs here as
        one process handling its connections in one event loop, so by the time the
        sentinel is logged every request finalized before it is logged too.
        Requests still being answered are not waited for (:meth:`stop` logs those).
        Sentinels never show in :meth:`requests`. Works in a network namespace
        (the sentinel is sent from inside it, with curl).
        """
        if self.master_process and self.workers > 1:
            raise OriginError("sync_log needs one nginx worker: several log in no common order")
        if not self.running:
            raise OriginError(f"sync_log: nginx is not running ({self.workdir})")
        token = uuid.uuid4().hex
        path = SENTINEL_PREFIX + token
        if self.netns:
            curl = ["curl", "-s", "-o", "/dev/null", "-m", str(timeout), self.url(path)]
            subprocess.run(
                ["ip", "netns", "exec", self.netns, *curl], check=True, capture_output=True, timeout=timeout + 5
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            try:
                conn.request("GET", path)
                conn.getresponse().read()
            finally:
                conn.close()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                self._refresh()
                if token in self._sentinels:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nginx did not log the sentinel {path} within {timeout}s")
            time.sleep(0.002)

    async def async_sync_log(self, timeout: float = 10.0) -> None:
        """:meth:`sync_log` for trio tests (in a worker thread, so the loop runs on)."""
        import trio

        await trio.to_thread.run_sync(self.sync_log, timeout)

    def clear_log(self) -> list[AccessEntry]:
        """Forget the entries logged so far and return them (atomically), so
        every entry is seen exactly once across clears; later ones are all kept.

        Works by offset (nginx keeps appending to the same file): every complete
        line already in the file is consumed, and a line nginx is writing at this
        very moment counts as after the clear.
        """
        with self._lock:
            self._refresh()
            dropped = self._entries[self._first :]
            self._first = len(self._entries)
        return dropped

    def wait_for_requests(
        self, n: int, timeout: float = 5.0, *, path: str | None = None, method: str | None = None
    ) -> list[AccessEntry]:
        """Poll until at least ``n`` matching entries are logged; return them.

        nginx logs a request when it finishes (or is aborted), not when it starts.
        """
        return _poll(lambda: self.requests(path, method), n, timeout)

    async def async_wait_for_requests(
        self, n: int, timeout: float = 5.0, *, path: str | None = None, method: str | None = None
    ) -> list[AccessEntry]:
        """:meth:`wait_for_requests` for trio tests (sleeps with ``trio.sleep``, so
        clients running in the same trio loop make progress meanwhile)."""
        return await _apoll(lambda: self.requests(path, method), n, timeout)


# --------------------------------------------------------------------------- #
# FaultyOrigin
# --------------------------------------------------------------------------- #

NORMAL = "normal"
STATUS = "status"
RESET = "reset"
TRUNCATE = "truncate"
BAD_CONTENT_RANGE = "bad_content_range"
IGNORE_RANGE = "ignore_range"
NO_HEAD = "no_head"
STALL = "stall"
SLOW = "slow"
CHUNKED = "chunked"
REDIRECT = "redirect"
NO_RANGE_SUPPORT = "no_range_support"


@dataclass(frozen=True)
class Behavior:
    """How :class:`FaultyOrigin` answers requests for one path.

    Build with the class methods. Any behavior takes ``times=N``: apply it to
    the first N requests of the path (counted from when it was set), then act
    normally. ``.replace(methods=("GET",))`` limits it to some methods.
    ``rate`` (bytes/s of body) and ``headers`` (extra response
    headers) apply with any kind. ``replace_headers`` replaces (or, with a None
    value, removes) headers of the served object's answer by name, e.g. a
    ``Content-Length`` of ``99999999999999999999`` for a hostile origin; the
    body sent stays the real one.
    """

    kind: str = NORMAL
    times: int | None = None
    code: int | None = None
    after: int | None = None
    duration: float | None = None
    resume: bool = True
    rate: float | None = None
    chunk_size: int = 16384
    target: str | None = None
    absolute: bool = False
    shift: int = 1
    headers: tuple[tuple[str, str], ...] = ()
    replace_headers: tuple[tuple[str, str | None], ...] = ()
    #: Apply only to these methods (e.g. ``("GET",)``); None: to every method.
    methods: tuple[str, ...] | None = None

    def replace(self, **changes) -> Behavior:
        return dataclasses.replace(self, **changes)

    @classmethod
    def normal(cls) -> Behavior:
        return cls()

    @classmethod
    def status(cls, code: int, *, times: int | None = None, headers: Iterable[tuple[str, str]] = ()) -> Behavior:
        """Answer ``code`` with an empty body (then normal after ``times``)."""
        return cls(STATUS, times=times, code=code, headers=tuple(headers))

    @classmethod
    def reset(cls, after: int | None = None, *, times: int | None = None) -> Behavior:
        """Abort with a TCP RST (SO_LINGER 0).

        ``after=None``: before any response byte. ``after=N``: after the headers
        and N body bytes (which are let reach the client first, as far as it
        reads them, within 2 s).
        """
        return cls(RESET, times=times, after=after)

    @classmethod
    def truncate(cls, after: int | None = None, *, times: int | None = None) -> Behavior:
        """Announce the full Content-Length, send ``after`` body bytes (default:
        half; always fewer than announced), then close cleanly (FIN)."""
        return cls(TRUNCATE, times=times, after=after)

    @classmethod
    def bad_content_range(cls, shift: int = 1, *, times: int | None = None) -> Behavior:
        """Answer a Range with 206 whose Content-Range (and body, consistently)
        covers other bytes than asked: shifted by ``shift`` (or shortened by one
        byte when it covers the whole body). Requests without Range: normal."""
        return cls(BAD_CONTENT_RANGE, times=times, shift=shift)

    @classmethod
    def ignore_range(cls, *, times: int | None = None) -> Behavior:
        """Advertise ``Accept-Ranges: bytes`` but answer 200 with the full body."""
        return cls(IGNORE_RANGE, times=times)

    @classmethod
    def no_range_support(cls, *, times: int | None = None) -> Behavior:
        """No ``Accept-Ranges`` header, and Range is ignored (200, full body)."""
        return cls(NO_RANGE_SUPPORT, times=times)

    @classmethod
    def no_head(cls, *, times: int | None = None) -> Behavior:
        """HEAD gets 405 (``Allow: GET``); GET is normal."""
        return cls(NO_HEAD, times=times)

    @classmethod
    def stall(
        cls, after: int | None = 0, *, duration: float | None = None, resume: bool = True, times: int | None = None
    ) -> Behavior:
        """Send headers and ``after`` body bytes (``after=None``: nothing at
        all), then hang without closing until the origin stops or ``duration``
        seconds pass; then send the rest (``resume``) or close."""
        return cls(STALL, times=times, after=after, duration=duration, resume=resume)

    @classmethod
    def slow(cls, rate: float, *, times: int | None = None) -> Behavior:
        """Cap the body at ``rate`` bytes per second (paced, no initial burst)."""
        return cls(SLOW, times=times, rate=rate)

    @classmethod
    def chunked(cls, chunk_size: int = 16384, *, times: int | None = None) -> Behavior:
        """``Transfer-Encoding: chunked`` and no Content-Length (ranges still work)."""
        return cls(CHUNKED, times=times, chunk_size=chunk_size)

    @classmethod
    def redirect(cls, target: str, code: int = 302, *, absolute: bool = False, times: int | None = None) -> Behavior:
        """Redirect to ``target``: a path, sent as is (relative) or made into
        this origin's URL (``absolute=True``), or a full URL sent as is."""
        return cls(REDIRECT, times=times, code=code, target=target, absolute=absolute)


@dataclass
class FaultyRequest:
    """One request :class:`FaultyOrigin` read, and what it did about it."""

    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str]
    connection: int
    behavior: str = NORMAL
    status: int | None = None
    body_bytes: int = 0
    #: The handler is through with it: ``body_bytes`` is final.
    done: bool = False

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass
class _Resource:
    body: bytes
    etag: str | None
    last_modified: str | None
    behavior: Behavior
    applied: int = 0


class _Stopped(Exception):
    pass


class _Close(Exception):
    """The handler already dealt with the socket; stop serving the connection."""


_UNSATISFIABLE = "unsatisfiable"
_DIGITS = re.compile(r"[0-9]+")


def parse_range(value: str, size: int):
    """One ``bytes=`` range → ``(first, last)`` inclusive, ``_UNSATISFIABLE``,
    or ``None`` to ignore the header (bad syntax, other unit, several ranges)."""
    value = value.strip()
    if not value[:6].lower() == "bytes=":
        return None
    spec = value[6:].strip()
    if "," in spec:
        return None
    first, dash, last = spec.partition("-")
    first, last = first.strip(), last.strip()
    if not dash:
        return None
    if not first:
        if not _DIGITS.fullmatch(last):
            return None
        n = int(last)
        if n == 0 or size == 0:
            return _UNSATISFIABLE
        return max(0, size - n), size - 1
    if not _DIGITS.fullmatch(first):
        return None
    a = int(first)
    if last:
        if not _DIGITS.fullmatch(last):
            return None
        b = int(last)
        if b < a:
            return None
    else:
        b = size - 1
    if a >= size:
        return _UNSATISFIABLE
    return a, min(b, size - 1)


def _etag_opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


class FaultyOrigin:
    """An HTTP/1.1 origin on real sockets that misbehaves on request.

    ``origin.add(path, body)`` registers a body; unknown paths get 404. GET and
    HEAD are served with keep-alive, Content-Length, single ``bytes=`` ranges
    (206, 416), If-None-Match (304) and If-Range. Several ranges in one header
    are ignored (200, full body), as RFC 9110 allows.

    ``etag=None`` derives a strong ETag from the body, ``etag=False`` sends none;
    ``last_modified=None`` uses the origin's start time, ``False`` sends none, a
    number is a Unix time, a string is sent as is.

    Accounting (thread-safe): :meth:`requests`, :meth:`count`, :meth:`counts`,
    :meth:`ranges`, :meth:`body_bytes` (body bytes, excluding chunk framing, that
    ``send()`` accepted; a chunk is counted just before its ``send()`` and
    corrected after, so bytes a client holds are always counted, and a finished
    response counts exactly), :attr:`connections` (accepted connections).
    :meth:`wait_idle` waits until every response so far is through.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, backlog: int = 128, ssl_context=None) -> None:
        #: An ``ssl.SSLContext`` (server side) to speak HTTPS instead of HTTP.
        self.ssl_context = ssl_context
        self.host = host
        self._want_port = port
        self._backlog = backlog
        self.port: int = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._resources: dict[str, _Resource] = {}
        self._log: list[FaultyRequest] = []
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._connections = 0
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._started_at = time.time()
        #: Unexpected exceptions in connection handlers (should stay empty).
        self.errors: list[str] = []

    # -- configuration -----------------------------------------------------

    def add(
        self,
        path: str,
        body: bytes,
        *,
        etag: str | bool | None = None,
        last_modified: float | str | bool | None = None,
        behavior: Behavior | None = None,
    ) -> str:
        """Serve ``body`` at ``path`` (replacing any previous one); returns the URL."""
        if etag is None:
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        elif etag is False:
            etag = None
        elif not (etag.startswith('"') or etag.startswith("W/")):
            etag = f'"{etag}"'
        if last_modified is None:
            last_modified = email.utils.formatdate(self._started_at, usegmt=True)
        elif last_modified is False:
            last_modified = None
        elif isinstance(last_modified, (int, float)):
            last_modified = email.utils.formatdate(last_modified, usegmt=True)
        with self._lock:
            self._resources[path] = _Resource(bytes(body), etag, last_modified, behavior or Behavior())
        return self.url(path)

    def remove(self, path: str) -> None:
        with self._lock:
            self._resources.pop(path, None)

    def set_behavior(self, path: str, behavior: Behavior) -> None:
        """Change a path's behavior; its ``times`` count starts again."""
        with self._lock:
            res = self._resources[path]
            res.behavior = behavior
            res.applied = 0

    def etag(self, path: str) -> str | None:
        with self._lock:
            return self._resources[path].etag

    def last_modified(self, path: str) -> str | None:
        with self._lock:
            return self._resources[path].last_modified

    # -- accounting --------------------------------------------------------

    def requests(self, path: str | None = None, method: str | None = None) -> list[FaultyRequest]:
        with self._lock:
            return [
                dataclasses.replace(r, headers=dict(r.headers))
                for r in self._log
                if (path is None or r.path == path) and (method is None or r.method == method.upper())
            ]

    def count(self, path: str | None = None, method: str | None = None) -> int:
        return len(self.requests(path, method))

    def ranges(self, path: str | None = None) -> list[str]:
        """The Range headers seen (requests without one are left out)."""
        return [r.range for r in self.requests(path) if r.range is not None]

    def counts(self, path: str | None = None) -> dict[str, int]:
        """Number of requests by method, e.g. ``{"GET": 3, "HEAD": 1}``."""
        out: dict[str, int] = {}
        for r in self.requests(path):
            out[r.method] = out.get(r.method, 0) + 1
        return out

    def body_bytes(self, path: str | None = None, method: str | None = None) -> int:
        return sum(r.body_bytes for r in self.requests(path, method))

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def clear(self) -> None:
        """Forget the accounting so far (not the resources)."""
        with self._lock:
            self._log.clear()
            self._connections = 0

    def wait_for_requests(
        self, n: int, timeout: float = 5.0, *, path: str | None = None, method: str | None = None
    ) -> list[FaultyRequest]:
        """Poll until at least ``n`` matching requests have been read (a request
        is recorded when its headers are read, before it is answered)."""
        return _poll(lambda: self.requests(path, method), n, timeout)

    async def async_wait_for_requests(
        self, n: int, timeout: float = 5.0, *, path: str | None = None, method: str | None = None
    ) -> list[FaultyRequest]:
        """:meth:`wait_for_requests` for trio tests."""
        return await _apoll(lambda: self.requests(path, method), n, timeout)

    def _busy(self) -> list[FaultyRequest]:
        return [r for r in self.requests() if not r.done]

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every request read so far is fully handled (``done``), so
        counts are final, e.g. after a client gave up mid-body and the handler
        has yet to notice. Stalled requests never get there: stop() first."""
        deadline = time.monotonic() + timeout
        while busy := self._busy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"requests still being answered: {busy}")
            time.sleep(0.002)

    async def async_wait_idle(self, timeout: float = 5.0) -> None:
        """:meth:`wait_idle` for trio tests."""
        import trio

        deadline = time.monotonic() + timeout
        while busy := self._busy():
            if time.monotonic() > deadline:
                raise TimeoutError(f"requests still being answered: {busy}")
            await trio.sleep(0.002)

    # -- lifecycle ---------------------------------------------------------

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{_host_for_url(self.host)}:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def __enter__(self) -> FaultyOrigin:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self._listener is not None:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        ls = socket.socket(family, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, self._want_port or self.port))
        ls.listen(self._backlog)
        self.port = ls.getsockname()[1]
        self._stopping.clear()
        self._listener = ls
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(ls,), name=f"faulty-origin-{self.port}-accept", daemon=True
        )
        self._accept_thread.start()

    def threads(self) -> list[threading.Thread]:
        with self._lock:
            ts = list(self._threads)
        if self._accept_thread is not None:
            ts.append(self._accept_thread)
        return [t for t in ts if t.is_alive()]

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection, release stalled handlers,
        and join all threads (raises :class:`OriginError` if one won't end)."""
        if self._listener is None:
            return
        deadline = time.monotonic() + timeout
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        except OSError:
            pass
        self._accept_thread.join(max(0.0, deadline - time.monotonic()))
        self._listener.close()
        with self._lock:
            for s in self._conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads + [self._accept_thread] if t.is_alive()]
        self._listener = None
        self._accept_thread = None
        if alive:
            raise OriginError(f"FaultyOrigin threads still alive after {timeout}s: {alive}")

    def _accept_loop(self, ls: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = ls.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.01)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._stopping.is_set():
                    conn.close()
                    return
                self._connections += 1
                cid = self._connections
                t = threading.Thread(
                    target=self._serve, args=(conn, cid), name=f"faulty-origin-{self.port}-conn-{cid}", daemon=True
                )
                self._conns.add(conn)
                self._threads.add(t)
            t.start()

    # -- connection handling -----------------------------------------------

    def _discard(self, sock: socket.socket, rst: bool = False) -> None:
        with self._lock:
            self._conns.discard(sock)
        if rst:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        try:
            sock.close()
        except OSError:
            pass

    def _serve(self, sock: socket.socket, cid: int) -> None:
        if self.ssl_context is not None:
            try:
                sock.settimeout(5)
                tls = self.ssl_context.wrap_socket(sock, server_side=True)
                tls.settimeout(None)
            except OSError:
                self._discard(sock)
                return
            with self._lock:
                self._conns.discard(sock)
                self._conns.add(tls)
            sock = tls
        buf = b""
        req = None
        try:
            while not self._stopping.is_set():
                req, buf = self._read_request(sock, buf, cid)
                if req is None:
                    break
                keep = self._handle(sock, req)
                self._finish(req)
                if not keep:
                    break
            self._discard(sock)
        except _Close:
            pass
        except (_Stopped, OSError):
            self._discard(sock)
        except Exception as e:  # a bug here: keep it visible, never hang a client
            with self._lock:
                self.errors.append(f"connection {cid}: {e!r}")
            self._discard(sock, rst=True)
        finally:
            if req is not None:
                self._finish(req)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _finish(self, req: FaultyRequest) -> None:
        with self._lock:
            req.done = True

    def _read_request(self, sock: socket.socket, buf: bytes, cid: int):
        while b"\r\n\r\n" not in buf:
            if len(buf) > 65536:
                self._send_simple(sock, None, 431, close=True)
                return None, b""
            data = sock.recv(65536)
            if not data:
                return None, b""
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._send_simple(sock, None, 400, close=True)
            return None, b""
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                continue
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            self._send_simple(sock, None, 400, close=True)
            return None, b""
        while len(rest) < length:
            data = sock.recv(65536)
            if not data:
                return None, b""
            rest += data
        rest = rest[length:]
        if target.startswith(("http://", "https://")):
            split = urllib.parse.urlsplit(target)
            path, query = split.path or "/", split.query
        else:
            path, _, query = target.partition("?")
        req = FaultyRequest(
            method=method.upper(), path=path, query=query, version=version, headers=headers, connection=cid
        )
        with self._lock:
            self._log.append(req)
        return req, rest

    @staticmethod
    def _keep_alive(req: FaultyRequest) -> bool:
        conn = req.headers.get("connection", "").lower()
        if req.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn

    def _send_head(
        self, sock, req: FaultyRequest | None, status: int, headers: list[tuple[str, str]], keep: bool
    ) -> None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        if req is not None:
            with self._lock:
                req.status = status
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            "Server: dffs-faulty-origin",
        ]
        lines += [f"{k}: {v}" for k, v in headers]
        lines.append("Connection: keep-alive" if keep else "Connection: close")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _send_simple(self, sock, req, status, extra=(), *, close=False) -> bool:
        keep = not close and req is not None and self._keep_alive(req)
        self._send_head(sock, req, status, [*extra, ("Content-Length", "0")], keep)
        return keep

    def _wait(self, seconds: float | None) -> None:
        """Sleep, but wake up (raising _Stopped) when the origin stops."""
        if self._stopping.wait(seconds):
            raise _Stopped()

    def _send_body(
        self,
        sock,
        req: FaultyRequest,
        data: bytes | memoryview,
        rate: float | None = None,
        chunked_size: int | None = None,
    ) -> None:
        view = memoryview(data)
        piece = 65536
        if rate:
            piece = max(1, min(piece, int(rate / 50)))
        if chunked_size:
            piece = min(piece, chunked_size)
        start = time.monotonic()
        sent = 0
        while sent < len(view):
            if self._stopping.is_set():
                raise _Stopped()
            if rate:
                due = start + sent / rate - time.monotonic()
                if due > 0:
                    self._wait(due)
            chunk = view[sent : sent + piece]
            if chunked_size:
                sock.sendall(f"{len(chunk):x}\r\n".encode())
            off = 0
            while off < len(chunk):
                # Count before send() so a client that already holds the bytes
                # never sees them uncounted; take back what send() did not take.
                want = len(chunk) - off
                with self._lock:
                    req.body_bytes += want
                try:
                    n = sock.send(chunk[off:])
                except BaseException:
                    with self._lock:
                        req.body_bytes -= want
                    raise
                if n < want:
                    with self._lock:
                        req.body_bytes -= want - n
                off += n
            if chunked_size:
                sock.sendall(b"\r\n")
            sent += len(chunk)

    def _drain_then_reset(self, sock) -> None:
        """Let what was sent reach the peer (SIOCOUTQ == 0), then RST."""
        deadline = time.monotonic() + 2.0
        buf = bytearray(4)
        while time.monotonic() < deadline and not self._stopping.is_set():
            try:
                fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
            except OSError:
                break
            if struct.unpack("i", buf)[0] == 0:
                break
            time.sleep(0.001)
        self._discard(sock, rst=True)
        raise _Close()

    def _close_gracefully(self, sock) -> None:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._discard(sock)
        raise _Close()

    def _pick(self, req: FaultyRequest) -> tuple[_Resource | None, Behavior]:
        with self._lock:
            res = self._resources.get(req.path)
            if res is None:
                return None, Behavior()
            b = res.behavior
            if b.methods is not None and req.method not in b.methods:
                b = Behavior()  # other methods are served normally and do not count
            elif b.times is not None:
                if res.applied >= b.times:
                    b = Behavior()
                else:
                    res.applied += 1
            req.behavior = b.kind
            return res, b

    def _handle(self, sock, req: FaultyRequest) -> bool:
        """Answer one request; True to keep the connection for another."""
        keep = self._keep_alive(req)
        res, b = self._pick(req)
        extra = list(b.headers)
        if res is None:
            return self._send_simple(sock, req, 404, extra)
        if req.method not in ("GET", "HEAD"):
            return self._send_simple(sock, req, 405, [("Allow", "GET, HEAD"), *extra])
        kind = b.kind
        if kind == STATUS:
            return self._send_simple(sock, req, b.code, extra)
        if kind == REDIRECT:
            target = b.target
            if b.absolute and not target.startswith(("http://", "https://")):
                target = self.url(target)
            return self._send_simple(sock, req, b.code, [("Location", target), *extra])
        if kind == RESET and b.after is None:
            self._drain_then_reset(sock)
        if kind == STALL and b.after is None:
            self._wait(b.duration)
            if not b.resume:
                self._close_gracefully(sock)
        if kind == NO_HEAD and req.method == "HEAD":
            return self._send_simple(sock, req, 405, [("Allow", "GET"), *extra])

        body = res.body
        size = len(body)
        validators = []
        if res.etag:
            validators.append(("ETag", res.etag))
        if res.last_modified:
            validators.append(("Last-Modified", res.last_modified))
        ranges_ok = kind not in (IGNORE_RANGE, NO_RANGE_SUPPORT)
        accept = [] if kind == NO_RANGE_SUPPORT else [("Accept-Ranges", "bytes")]

        inm = req.headers.get("if-none-match")
        if inm is not None and res.etag:
            tags = [t.strip() for t in inm.split(",")]
            if "*" in tags or _etag_opaque(res.etag) in {_etag_opaque(t) for t in tags}:
                self._send_head(sock, req, 304, [*validators, *extra], keep)
                return keep

        status, first, last = 200, 0, size - 1
        content_range = None
        rng = req.headers.get("range")
        if rng is not None and ranges_ok and self._if_range_ok(req, res):
            parsed = parse_range(rng, size)
            if parsed == _UNSATISFIABLE:
                return self._send_simple(
                    sock, req, 416, [("Content-Range", f"bytes */{size}"), *accept, *validators, *extra]
                )
            if parsed is not None:
                status, (first, last) = 206, parsed
                if kind == BAD_CONTENT_RANGE:
                    first, last = self._wrong_range(first, last, size, b.shift)
                content_range = f"bytes {first}-{last}/{size}"
        part = memoryview(body)[first : last + 1]
        headers = [("Content-Type", "application/octet-stream"), *accept, *validators]
        if content_range:
            headers.append(("Content-Range", content_range))
        chunked = kind == CHUNKED
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Content-Length", str(len(part))))
        headers += extra
        if b.replace_headers:
            replaced = {name.lower() for name, _ in b.replace_headers}
            headers = [h for h in headers if h[0].lower() not in replaced]
            headers += [(name, value) for name, value in b.replace_headers if value is not None]
            keep = False  # the framing may be a lie now: one answer per connection
        if kind in (RESET, TRUNCATE):
            keep = False
        self._send_head(sock, req, status, headers, keep)
        if req.method == "HEAD":
            if kind == RESET:
                self._drain_then_reset(sock)
            return keep

        if kind == TRUNCATE:
            n = len(part) // 2 if b.after is None else b.after
            n = min(n, max(len(part) - 1, 0))
            self._send_body(sock, req, part[:n], b.rate)
            self._close_gracefully(sock)
        if kind == RESET:
            self._send_body(sock, req, part[: b.after], b.rate)
            self._drain_then_reset(sock)
        if kind == STALL and b.after is not None:
            self._send_body(sock, req, part[: b.after], b.rate)
            self._wait(b.duration)
            if not b.resume:
                self._close_gracefully(sock)
            self._send_body(sock, req, part[b.after :], b.rate)
            return keep
        if chunked:
            self._send_body(sock, req, part, b.rate, chunked_size=b.chunk_size)
            sock.sendall(b"0\r\n\r\n")
            return keep
        self._send_body(sock, req, part, b.rate)
        return keep

    @staticmethod
    def _if_range_ok(req: FaultyRequest, res: _Resource) -> bool:
        cond = req.headers.get("if-range")
        if cond is None:
            return True
        cond = cond.strip()
        if cond.startswith('"') or cond.startswith("W/"):
            return (
                res.etag is not None
                and not cond.startswith("W/")
                and not res.etag.startswith("W/")
                and cond == res.etag
            )
        return res.last_modified is not None and cond == res.last_modified

    @staticmethod
    def _wrong_range(first: int, last: int, size: int, shift: int) -> tuple[int, int]:
        length = last - first + 1
        if length >= size:
            return (0, size - 2) if size >= 2 else (first, last)
        new_first = first + shift
        if new_first + length > size or new_first < 0:
            new_first = first - shift
        if new_first < 0 or new_first + length > size or new_first == first:
            new_first = size - length if first == 0 else 0
        return new_first, new_first + length - 1
