"""``dffs mount MOUNTPOINT`` (and ``dffs daemon --mount MOUNTPOINT``): the lazy filesystem, in the foreground."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import attrs
import trio

from dffs import config as config_module
from dffs.errors import UsageError
from dffs.fs.mount import MountConfig, serve_standalone
from dffs.fs.operations import PREFETCH_MODES

log = logging.getLogger(__name__)

#: Seconds a daemon waits for the data dir's previous daemon to let go of it.
LOCK_WAIT = 10.0

_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def add_daemon_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR", help="piece storage (default /var/lib/dffs)")
    parser.add_argument("--config", metavar="FILE", help="TOML file with defaults for these flags")
    parser.add_argument("--scheduler", metavar="ADDR[,ADDR...]", help="schedulers for P2P")
    parser.add_argument("--manager", metavar="ADDR", help="manager that hands out schedulers")
    from dffs.cli.cluster import add_cluster_arguments

    add_cluster_arguments(parser)


def add_host_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a P2P host (``dffs daemon``, and ``dffs mount`` with --scheduler)."""
    parser.add_argument("--ip", help="this host's address, advertised to peers (default 127.0.0.1)")
    parser.add_argument("--hostname", help="this host's name (default: the system's)")
    parser.add_argument("--upload-port", type=int, metavar="N", help="piece data plane port (default 4000)")
    parser.add_argument("--rpc-port", type=int, metavar="N", help="gRPC upload service port (default 65000)")
    parser.add_argument("--seed", action="store_true", default=None, help="act as a seed peer")
    parser.add_argument("--idc", help="data centre label, to prefer close parents")
    parser.add_argument("--location", help="location label 'area|country|city'")
    parser.add_argument(
        "--proxy-port",
        type=int,
        metavar="N",
        help="HTTP proxy / registry mirror port (default 4001; 0: any free port; -1: off)",
    )
    parser.add_argument(
        "--registry-mirror", metavar="URL", help="upstream registry the proxy mirrors, e.g. http://10.0.0.5:5000"
    )
    parser.add_argument(
        "--storage-quota",
        metavar="SIZE|PCT%",
        help="GC disk budget for the cache, e.g. 20GiB or 80%% of the data dir's filesystem",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="Prometheus /metrics and /healthy port (default 4002; 0: any free port; -1: off)",
    )


def add_mount_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="put a source's tree at MOUNT/NAME (http(s) autoindex or s3://bucket/prefix); repeatable",
    )
    parser.add_argument("--manifest", metavar="FILE", help="JSON lines {path, url, size, digest?, mtime?}")
    parser.add_argument(
        "--prefetch",
        action="append",
        default=[],
        metavar="MODE|NAME=MODE",
        help=f"readahead policy ({'|'.join(PREFETCH_MODES)}; default sequential); NAME=MODE for one --source",
    )
    parser.add_argument(
        "--read-timeout", type=float, metavar="SECONDS", help="a read that takes longer fails with EIO (default 30)"
    )


def parse_sources(values: list[str]) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for value in values:
        name, sep, url = value.partition("=")
        if not sep or not url:
            raise UsageError(f"bad --source {value!r}: expected NAME=URL")
        if not _SOURCE_NAME.match(name) or name in ("http", "https"):
            raise UsageError(f"bad --source name {name!r}: letters, digits, '.', '_', '-', and not http/https")
        if name in dict(pairs):
            raise UsageError(f"--source {name} given twice")
        pairs.append((name, url))
    return tuple(pairs)


def parse_prefetch(values: list[str]) -> dict[str, object]:
    """``--prefetch MODE`` (the mount's default) and ``--prefetch NAME=MODE`` (one source's) as config values."""
    default: str | None = None
    per_source: dict[str, str] = {}
    for value in values:
        name, sep, mode = value.rpartition("=")
        if mode not in PREFETCH_MODES:
            raise UsageError(f"bad --prefetch {value!r}: the mode must be one of {', '.join(PREFETCH_MODES)}")
        if sep:
            per_source[name] = mode
        else:
            default = mode
    out: dict[str, object] = {"prefetch": default}
    if per_source:
        out["source_prefetch"] = tuple(per_source.items())
    return out


def mount_config(args: argparse.Namespace, mountpoint: str) -> MountConfig:
    file_values = config_module.load_toml(args.config) if args.config else {}
    from dffs.daemon.config import DaemonConfig

    cfg = config_module.build(
        MountConfig,
        {
            k: v
            for k, v in file_values.items()
            if k not in ("manager", "snapshotter")
            and k not in {f.name for f in attrs.fields(DaemonConfig)} - {"data_dir"}
        },
        {
            "mountpoint": Path(mountpoint),
            "data_dir": args.data_dir,
            "sources": parse_sources(args.source) if args.source else None,
            "manifest": Path(args.manifest) if args.manifest else None,
            **parse_prefetch(args.prefetch),
            "read_timeout": args.read_timeout,
        },
    )
    if cfg.read_timeout <= 0:
        raise UsageError("--read-timeout must be positive")
    return cfg


def daemon_config(args: argparse.Namespace):
    from dffs.daemon.config import DaemonConfig

    file_values = config_module.load_toml(args.config) if args.config else {}
    return config_module.build(
        DaemonConfig,
        file_values,
        {
            name: getattr(args, name, None)
            for name in (
                "data_dir",
                "ip",
                "hostname",
                "upload_port",
                "rpc_port",
                "scheduler",
                "manager",
                "seed",
                "idc",
                "location",
                "proxy_port",
                "registry_mirror",
                "storage_quota",
                "metrics_port",
                "cluster_key",
                "insecure",
            )
        },
        ignore=[*(f.name for f in attrs.fields(MountConfig)), "snapshotter"],
    )


def run_mount(args: argparse.Namespace) -> int:
    mountpoint = args.mountpoint if args.command == "mount" else args.mount
    if args.verbose:
        logging.getLogger().setLevel(logging.INFO)
    if (
        args.command == "mount"
        and not args.scheduler
        and not args.manager
        and not args.storage_quota
        and args.metrics_port is None
    ):
        from dffs.storage.lock import hold_data_dir

        cfg = mount_config(args, mountpoint)
        with hold_data_dir(cfg.data_dir, "daemon", wait=LOCK_WAIT):  # a mount is a data dir's daemon too
            trio.run(serve_standalone, cfg)  # no P2P, GC quota or metrics: no ports opened
        return 0
    from dffs.daemon.server import Daemon

    file_values = config_module.load_toml(args.config) if args.config else {}
    snapshotter = None
    if getattr(args, "snapshotter", False) or file_values.get("snapshotter", False) is not False:
        from dffs.snapshotter.config import from_toml

        snapshotter = from_toml(file_values.get("snapshotter"))
    from dffs.storage.lock import hold_data_dir

    cfg = daemon_config(args)
    # One daemon per data dir (its socket, journals and GC); a predecessor that is
    # stopping (its supervisor crashed: SIGTERM, unmount) is given a few seconds.
    with hold_data_dir(cfg.data_dir, "daemon", wait=LOCK_WAIT):
        daemon = Daemon(cfg, mount_config(args, mountpoint) if mountpoint else None, snapshotter=snapshotter)
        trio.run(daemon.run)
    return 0
