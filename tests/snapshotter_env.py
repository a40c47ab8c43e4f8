"""A dffs daemon with ``--snapshotter`` and a containerd that uses it, for tests.

``SnapshotterHost`` runs both on one host (the root namespace or a
``netns.Host``): the daemon's snapshots API on ``DATA_DIR/snapshotter.sock``,
containerd configured with ``[proxy_plugins.dffs]`` pointing at it. Unix
sockets are reachable from every namespace, so ``ctr`` and ``dffs image pull``
talk to containerd from the test process. ``close()`` always tears down
containerd (and its mounts) first, then the daemon (and its FUSE mount).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from cluster import Daemon
from containerd import Containerd, proxy_snapshotter


class SnapshotterHost:
    def __init__(
        self,
        tmp: Path,
        name: str,
        *,
        scheduler: str | None = None,
        ip: str = "127.0.0.1",
        netns_host=None,
        extra: tuple[str, ...] = (),
        mount: bool = False,
    ):
        self.tmp = Path(tmp)
        self.name = name
        self.ip = ip
        self.netns_host = netns_host
        self.daemon = Daemon(
            self.tmp,
            name,
            scheduler,
            ip=ip,
            prefix=netns_host.command([]) if netns_host is not None else None,
            extra=("--snapshotter", "--proxy-port", "-1", "--metrics-port", "0", *extra),
            mount=mount,  # --mount too: the URL namespace and the layers (MOUNT/.layers) in one session
        )
        self.containerd: Containerd | None = None

    @property
    def socket(self) -> Path:
        return self.daemon.data_dir / "snapshotter.sock"

    def start_daemon(self, timeout: float = 30) -> None:
        self.daemon.match = None
        self.daemon.start(timeout)
        deadline = time.monotonic() + timeout
        while "event=snapshotter_ready" not in self.daemon.output():
            if time.monotonic() > deadline or not self.daemon.alive():
                raise RuntimeError(f"snapshotter did not come up:\n{self.daemon.output()[-3000:]}")
            time.sleep(0.05)

    def start(self) -> SnapshotterHost:
        self.start_daemon()
        self.containerd = Containerd(
            self.tmp / f"containerd-{self.name}",
            netns_host=self.netns_host,
            extra_config=proxy_snapshotter("dffs", self.socket),
        )
        self.containerd.start()
        return self

    @property
    def layers_dir(self) -> Path:
        if self.daemon.mountpoint is not None:
            return self.daemon.mountpoint / ".layers"
        return self.daemon.data_dir / "snapshotter" / "layers"

    @property
    def fuse_mountpoint(self) -> Path:
        return self.daemon.mountpoint or self.layers_dir

    def metrics(self) -> str:
        """The daemon's Prometheus text."""
        port = re.search(r"metrics_port=(\d+)", self.daemon.match.string).group(1)
        url = f"http://{self.ip}:{port}/metrics"
        argv = ["curl", "-sf", url]
        if self.netns_host is not None:
            argv = self.netns_host.command(argv)
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=10).stdout

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the series ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            match = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
            if not match:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(match.group(2))
        return total

    def downloaded(self) -> float:
        """Piece bytes this daemon fetched (from the origin or peers)."""
        return self.metric("dffs_daemon_download_bytes_total", source="origin") + self.metric(
            "dffs_daemon_download_bytes_total", source="peer"
        )

    def image_pull(self, ref: str, *extra: str, check: bool = True, timeout: float = 300):
        """``dffs image pull REF --containerd SOCK --plain-http``."""
        assert self.containerd is not None
        argv = [sys.executable, "-m", "dffs", "image", "pull", ref, "--containerd", self.containerd.address,
                "--plain-http", "--data-dir", str(self.daemon.data_dir), *extra]  # fmt: skip
        if self.netns_host is not None:  # the registry is reachable from the host's namespace only
            argv = self.netns_host.command(argv)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, (result.stdout, result.stderr, self.daemon.output()[-4000:])
        return result

    def wait_for_containerd_link(self, timeout: float = 30) -> None:
        """After a restart: until containerd's proxy client has reconnected (it backs off up to a few seconds)."""
        deadline = time.monotonic() + timeout
        while self.ctr("snapshots", "--snapshotter", "dffs", "ls", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError("containerd did not reconnect to the snapshotter")
            time.sleep(0.1)

    def daemon_log_waits_for(self, text: str, timeout: float = 60) -> str:
        """The daemon's log once it holds ``text`` (fails after ``timeout`` or if the daemon dies)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.daemon.output()):
            if time.monotonic() > deadline or not self.daemon.alive():
                raise AssertionError(f"{text!r} never logged by {self.name}:\n{log[-3000:]}")
            time.sleep(0.1)
        return log

    def run(self, ref: str, name: str, *argv: str) -> str:
        """``ctr run --rm --snapshotter dffs REF NAME [ARGV]``'s output.

        ctr 1.6 now and then loses the output of a container that exits at once
        (the run succeeds, stdout is empty; seen with containerd's own overlayfs
        snapshotter too): such a run is repeated once, under a new ID.
        """
        out = ""
        for attempt in range(2):
            out = self.ctr(
                "run", "--rm", "--snapshotter", "dffs", ref, f"{name}-again" if attempt else name, *argv
            ).stdout
            if out:
                break
        return out

    def ctr(self, *args: str, **kwargs):
        assert self.containerd is not None
        return self.containerd.ctr(*args, **kwargs)

    def close(self) -> None:
        """containerd (and its overlays), the daemon, then the layers' mount, whose keeper then exits."""
        try:
            if self.containerd is not None:
                self.containerd.close()
        finally:
            try:
                self.daemon.stop()
            finally:
                stop_keeper(self.fuse_mountpoint, self.daemon.data_dir / "snapshotter" / "fuse.sock")


def stop_keeper(mountpoint: Path, socket: Path) -> None:
    """Unmount the layers (the keeper sees it and exits), and kill a keeper that is left anyway."""
    subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
    deadline = time.monotonic() + 10
    while pids := _keeper_pids(socket):
        if time.monotonic() > deadline:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)


def _keeper_pids(socket: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"dffs.fs.keeper" in cmdline and str(socket).encode() in cmdline:
                found.append(int(entry.name))
    return found
