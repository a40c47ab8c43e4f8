"""Real dffs processes for P2P tests: a scheduler and daemons, each printing its ports when ready."""

from __future__ import annotations

import re
import selectors
import subprocess
import sys
import time
from pathlib import Path

from members import api_token
from mounts import force_unmount, is_mounted


class Process:
    """A dffs subprocess whose first stdout line matching ``ready`` says it is up."""

    def __init__(self, argv: list[str], log_path: Path, ready: str, *, prefix: list[str] | None = None):
        self.argv = [*(prefix or []), sys.executable, "-m", "dffs", "--debug", *argv]
        self.log_path = log_path
        self.ready_re = re.compile(ready)
        self.proc: subprocess.Popen | None = None
        self.match: re.Match | None = None
        #: A manager's HTTP API token, when it printed one (its database's first start).
        self.api_token: str | None = None

    def start(self, timeout: float = 20) -> Process:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True
        )
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while self.match is None:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.argv[3:5]} did not start:\n{self.output()}")
                if sel.select(min(left, 0.2)):
                    line = self.proc.stdout.readline()
                    self.api_token = api_token(line) or self.api_token
                    self.match = self.ready_re.search(line)
        finally:
            sel.close()
        return self

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = 15, timeout: float = 10) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


def scheduler(tmp: Path, listen: str = "127.0.0.1:0", *, prefix=None) -> Process:
    return Process(
        ["scheduler", "--listen", listen],
        tmp / f"scheduler-{listen.replace(':', '_')}.log",
        r"listening on (\S+):(\d+)",
        prefix=prefix,
    ).start()


class Manager(Process):
    """``dffs manager`` on SQLite (or ``db``); ``grpc_address`` and ``http_url`` once started."""

    def __init__(
        self,
        tmp: Path,
        ip: str = "127.0.0.1",
        *,
        db: str | None = None,
        prefix=None,
        config: str = "keepalive_ttl = 3\njob_poll_interval = 0.2\n",
    ):
        self.ip = ip
        conf = tmp / "manager.toml"
        conf.write_text(config)
        db = db or f"sqlite:///{tmp / 'manager.db'}"
        super().__init__(
            ["manager", "--listen", f"{ip}:0", "--http-listen", f"{ip}:0", "--db", db, "--config", str(conf)],
            tmp / "manager.log",
            r"listening on \S+ \(port (\d+)\)",
            prefix=prefix,
        )

    def start(self, timeout: float = 20) -> Manager:
        super().start(timeout)
        self.grpc_address = f"{self.ip}:{self.match.group(1)}"
        http_line = self.proc.stdout.readline()  # printed right after the gRPC line
        http_port = re.search(r"http api on http://\S+:(\d+)/api/v1", http_line)
        assert http_port, (http_line, self.output())
        self.http_url = f"http://{self.ip}:{http_port.group(1)}/api/v1"
        assert self.api_token, "a manager on a new database prints its API token"
        return self

    @property
    def auth_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_token}"}

    def http(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        import json
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.http_url + path, data=data, method=method, headers=self.auth_header)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


class Daemon(Process):
    def __init__(
        self,
        tmp: Path,
        name: str,
        scheduler_addr: str | None,
        *,
        ip: str = "127.0.0.1",
        seed: bool = False,
        mount: bool = False,
        prefix=None,
        extra: tuple[str, ...] = (),
        manager: str | None = None,
    ):
        self.data_dir = tmp / f"{name}-data"
        self.mountpoint = tmp / f"{name}-mnt" if mount else None
        argv = [
            "daemon",
            "--data-dir",
            str(self.data_dir),
            "--ip",
            ip,
            "--hostname",
            name,
            "--upload-port",
            "0",
            "--rpc-port",
            "0",
            "-v",
            *extra,
        ]
        if scheduler_addr:
            argv += ["--scheduler", scheduler_addr]
        if manager:
            argv += ["--manager", manager]
        if seed:
            argv.append("--seed")
        if mount:
            argv += ["--mount", str(self.mountpoint)]
        super().__init__(argv, tmp / f"{name}.log", r"ready upload_port=(\d+) rpc_port=(\d+)", prefix=prefix)

    def start(self, timeout: float = 20) -> Daemon:
        super().start(timeout)
        if self.mountpoint is not None:
            deadline = time.monotonic() + timeout
            while "event=mounted" not in self.output():
                if time.monotonic() > deadline or not self.alive():
                    raise RuntimeError(f"mount did not come up:\n{self.output()}")
                time.sleep(0.05)
        return self

    def stop(self, sig: int = 15, timeout: float = 10) -> None:
        try:
            super().stop(sig, timeout)
        finally:
            if self.mountpoint is not None and is_mounted(self.mountpoint):
                force_unmount(self.mountpoint)

    def path(self, url_path: str, origin) -> Path:
        return self.mountpoint / "http" / f"{origin.host}:{origin.port}" / url_path.lstrip("/")
