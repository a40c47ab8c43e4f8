"""A real containerd (1.6, Debian) for tests, optionally inside a network namespace.

Each instance has its own root, state and sockets (sockets under a short
directory in /run: Unix socket paths are limited to 108 bytes), the CRI
plugin disabled, and is driven with ``ctr``. Processes run with
``nsenter --net=`` (network only): ``ip netns exec`` would hide the cgroup
mounts runc needs (see TESTING.md).

:meth:`Containerd.close` always cleans up, even after a failure: it kills
containerd and its shims (found by this instance's unique socket path in
their command lines), lazily unmounts whatever is left under its root and
state (snapshots, container rootfs), and removes its directories.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


class Containerd:
    def __init__(self, workdir: Path, netns_host=None, *, extra_config: str = ""):
        self.workdir = Path(workdir)
        #: Appended to the config, e.g. a ``[proxy_plugins.dffs]`` table (see :func:`proxy_snapshotter`).
        self.extra_config = extra_config
        self.netns_host = netns_host
        self.proc: subprocess.Popen | None = None
        self.rundir = Path(tempfile.mkdtemp(prefix="dffs-ctd-", dir="/run"))
        self.address = str(self.rundir / "c.sock")
        self.root = self.workdir / "root"
        self.state = self.rundir / "state"
        self.log_path = self.workdir / "containerd.log"

    def command(self, argv: list[str]) -> list[str]:
        return self.netns_host.command(argv) if self.netns_host is not None else argv

    def start(self, timeout: float = 30) -> Containerd:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.root}"\n'
            f'state = "{self.state}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{self.address}.ttrpc"\n'
            f'[debug]\n  address = "{self.rundir / "d.sock"}"\n' + self.extra_config
        )
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.command(["containerd", "--config", str(config)]), stdout=log, stderr=log, start_new_session=True
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while subprocess.run(["ctr", "--address", self.address, "version"], capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = self.log_path.read_text(errors="replace")[-2000:]
                self.close()
                raise RuntimeError(f"containerd did not start:\n{output}")
            time.sleep(0.1)
        return self

    def ctr(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """``ctr --address SOCK ARGS`` in this instance's network namespace."""
        result = subprocess.run(
            self.command(["ctr", "--address", self.address, *args]), capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"ctr {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
                f"\n--- containerd log ---\n{self.log_path.read_text(errors='replace')[-3000:]}"
            )
        return result

    def pull(self, ref: str, *, hosts_dir: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        args = ["images", "pull"]
        if hosts_dir is not None:
            args += ["--hosts-dir", str(hosts_dir)]
        else:
            args.append("--plain-http")
        return self.ctr(*args, ref, timeout=timeout)

    def run(self, ref: str, name: str, timeout: float = 60) -> str:
        """Run the image's command to completion; returns its stdout."""
        return self.ctr("run", "--rm", ref, name, timeout=timeout).stdout

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        _kill_matching(str(self.rundir))  # shims daemonize out of containerd's process group
        for base in (self.root, self.state):
            for mountpoint in sorted(_mounts_under(base), key=len, reverse=True):
                subprocess.run(["umount", "-l", mountpoint], capture_output=True)
        shutil.rmtree(self.rundir, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def proxy_snapshotter(name: str, socket: Path) -> str:
    """The config table that makes containerd use a snapshotter served on ``socket``."""
    return f'[proxy_plugins.{name}]\n  type = "snapshot"\n  address = "{socket}"\n'


def write_hosts_toml(hosts_dir: Path, registry: str, mirror: str | None) -> Path:
    """``hosts_dir/<registry>/hosts.toml``: pull ``registry`` (HOST:PORT, plain HTTP)
    through ``mirror`` (``http://127.0.0.1:4001``), or directly when None."""
    directory = Path(hosts_dir) / registry
    directory.mkdir(parents=True, exist_ok=True)
    text = f'server = "http://{registry}"\n'
    # containerd 1.6 refuses a hosts.toml without a host table ("invalid `host` tree"):
    # going direct, the registry itself is the one host.
    text += f'[host."{mirror or f"http://{registry}"}"]\n  capabilities = ["pull", "resolve"]\n'
    (directory / "hosts.toml").write_text(text)
    return Path(hosts_dir)


def _kill_matching(needle: str) -> None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _mounts_under(base: Path) -> list[str]:
    prefix = str(base).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mountpoint = line.split()[4].replace("\\040", " ")
            if mountpoint.startswith(prefix) or mountpoint == str(base):
                found.append(mountpoint)
    return found
