"""A dffs daemon with ``--snapshotter`` and a containerd that uses it, for tests.

``SnapshotterHost`` runs both on one host (the root namespace or a
``netns.Host``): the daemon's snapshots API on ``DATA_DIR/snapshotter.sock``,
containerd configured with ``[proxy_plugins.dffs]`` pointing at it. Unix
sockets are reachable from every namespace, so ``ctr`` and ``dffs image pull``
talk to containerd from the test process. ``close()`` always tears down
containerd (and its mounts) first, then the daemon (and its FUSE mount).
"""

from __future__ import annotations

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
    ):
        self.tmp = Path(tmp)
        self.name = name
        self.netns_host = netns_host
        self.daemon = Daemon(
            self.tmp,
            name,
            scheduler,
            ip=ip,
            prefix=netns_host.command([]) if netns_host is not None else None,
            extra=("--snapshotter", "--proxy-port", "-1", "--metrics-port", "0", *extra),
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

    def ctr(self, *args: str, **kwargs):
        assert self.containerd is not None
        return self.containerd.ctr(*args, **kwargs)

    def close(self) -> None:
        try:
            if self.containerd is not None:
                self.containerd.close()
        finally:
            self.daemon.stop()
