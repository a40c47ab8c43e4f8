"""``dffs cluster init FILE``: the cluster's secret material; and the flags every member takes."""

from __future__ import annotations

import argparse
from pathlib import Path

from dffs.security.setup import DEFAULT_CLUSTER_KEY


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """``--cluster-key FILE`` and ``--insecure``: for every command that talks TCP to other members."""
    parser.add_argument(
        "--cluster-key",
        metavar="FILE",
        help=f"the cluster key made by `dffs cluster init` (default {DEFAULT_CLUSTER_KEY} when it exists)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="talk to other members in plain text, unauthenticated (logs a warning)",
    )


def add_cluster_command(commands) -> None:
    cluster = commands.add_parser("cluster", help="the cluster's secret material (a CA every member trusts)")
    sub = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND")
    sub.required = True
    init = sub.add_parser("init", help="create a cluster key: give the file (mode 0600) to every member")
    init.add_argument("file", metavar="FILE", help=f"where to write it, e.g. {DEFAULT_CLUSTER_KEY}")


def run_cluster(args: argparse.Namespace) -> int:
    from dffs.security.ca import create_cluster_key

    path = Path(args.file).absolute()
    key = create_cluster_key(path)
    print(
        f"cluster key written to {path} (mode 0600, CA {key.fingerprint}); copy it to every member's "
        f"{DEFAULT_CLUSTER_KEY}, or pass --cluster-key {path}"
    )
    return 0
