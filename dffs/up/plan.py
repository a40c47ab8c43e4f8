"""What ``dffs up`` starts, in order, and how each child says it is ready (pure).

Every child listens on loopback with a port the kernel picks (port 0), so
``dffs up`` never collides with anything; each child's ready line gives the
port the next child needs (the manager's gRPC port for the scheduler and
both daemons). The normal daemon uses DATA_DIR itself, so ``dffs get`` and
``dffs ctl`` with ``--data-dir DATA_DIR`` find its socket.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

MANAGER_READY = re.compile(r"dffs manager: listening on \S+:(?P<port>\d+) ")
SCHEDULER_READY = re.compile(r"dffs scheduler: listening on \S+:(?P<port>\d+) ")
DAEMON_READY = re.compile(r"dffs daemon ready upload_port=(?P<port>\d+) ")
IP = "127.0.0.1"


@attrs.frozen
class Child:
    name: str
    #: arguments after ``dffs``; ``{manager}`` is replaced by the manager's gRPC address.
    args: tuple[str, ...]
    ready: re.Pattern

    def argv(self, manager: str | None) -> list[str]:
        return [a.replace("{manager}", manager or "") for a in self.args]


def children(data_dir: Path, mountpoint: Path, *, cluster: tuple[str, ...] = (), debug: bool = False) -> list[Child]:
    """``cluster``: the trust flags every child gets (``--cluster-key FILE``, or ``--insecure``)."""
    config = data_dir / "up"
    verbose = ("-v",) if debug else ()
    plan = [
        Child(
            "manager",
            (
                "manager",
                "--listen",
                f"{IP}:0",
                "--http-listen",
                f"{IP}:0",
                "--db",
                f"sqlite:///{(data_dir / 'manager.db').absolute()}",
                "--config",
                str(config / "manager.toml"),
            ),
            MANAGER_READY,
        ),
        Child(
            "scheduler",
            ("scheduler", "--listen", f"{IP}:0", "--manager", "{manager}", "--config", str(config / "scheduler.toml")),
            SCHEDULER_READY,
        ),
        Child(
            "seed",
            (
                "daemon",
                "--seed",
                "--data-dir",
                str(data_dir / "seed"),
                "--ip",
                IP,
                "--hostname",
                "seed",
                "--upload-port",
                "0",
                "--rpc-port",
                "0",
                "--manager",
                "{manager}",
                "--proxy-port",
                "-1",
                "--metrics-port",
                "0",  # the host's proxy and metrics: the daemon's
                "--config",
                str(config / "daemon.toml"),
                *verbose,
            ),
            DAEMON_READY,
        ),
        Child(
            "daemon",
            (
                "daemon",
                "--data-dir",
                str(data_dir),
                "--ip",
                IP,
                "--hostname",
                "peer",
                "--upload-port",
                "0",
                "--rpc-port",
                "0",
                "--manager",
                "{manager}",
                "--mount",
                str(mountpoint),
                "--config",
                str(config / "daemon.toml"),
                *verbose,
            ),
            DAEMON_READY,
        ),
    ]
    return [attrs.evolve(child, args=(*child.args, *cluster)) for child in plan]


#: Config files written to DATA_DIR/up/ (short refresh intervals: everything is local).
CONFIGS = {
    "manager.toml": "keepalive_ttl = 15\njob_poll_interval = 0.5\n",
    "scheduler.toml": "manager_refresh_interval = 2\n",
    "daemon.toml": "manager_refresh_interval = 2\nannounce_interval = 5\n",
}
