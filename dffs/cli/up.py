"""``dffs up MOUNTPOINT [--data-dir DIR]``: manager, scheduler, seed and daemon with the mount, on this host."""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path

import trio

from dffs.config import DEFAULT_DATA_DIR
from dffs.errors import primary_error


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="where to mount the lazy filesystem")
    parser.add_argument("--data-dir", metavar="DIR", help=f"everything dffs keeps (default {DEFAULT_DATA_DIR})")
    from dffs.cli.cluster import add_cluster_arguments

    add_cluster_arguments(parser)


def run_up(args: argparse.Namespace) -> int:
    debug = logging.getLogger().isEnabledFor(logging.DEBUG)
    data_dir = Path(args.data_dir or DEFAULT_DATA_DIR).absolute()
    try:
        return _run(args, data_dir, debug)
    except BaseExceptionGroup as group:  # one line, like every other command's errors
        raise primary_error(group) from None


def _run(args: argparse.Namespace, data_dir: Path, debug: bool) -> int:
    from dffs.storage.lock import hold_data_dir
    from dffs.up.supervisor import up

    with hold_data_dir(data_dir, "up"):
        return _run_locked(args, data_dir, debug, up)


def _run_locked(args: argparse.Namespace, data_dir: Path, debug: bool, up) -> int:
    return trio.run(
        functools.partial(
            up,
            data_dir,
            Path(args.mountpoint).absolute(),
            cluster_key=Path(args.cluster_key).absolute() if args.cluster_key else None,
            insecure=bool(args.insecure),
            debug=debug,
        )
    )
