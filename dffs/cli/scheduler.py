"""``dffs scheduler``: the scheduler service, in the foreground."""

from __future__ import annotations

import argparse
import logging
import os

from dffs import config as config_module
from dffs.scheduler.config import DEFAULT_LISTEN, SchedulerConfig, check_listen


def add_scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", metavar="ADDR", help=f"gRPC address, HOST:PORT or unix:PATH (default {DEFAULT_LISTEN})"
    )
    parser.add_argument(
        "--manager",
        metavar="ADDR",
        help="manager to register with (gRPC HOST:PORT); it hands this scheduler to daemons",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file with defaults for these flags and the tunables")
    parser.add_argument(
        "--data-dir", metavar="DIR", help="where a one-host cluster's key is made (default /var/lib/dffs)"
    )
    from dffs.cli.cluster import add_cluster_arguments

    add_cluster_arguments(parser)


def scheduler_config(args: argparse.Namespace) -> SchedulerConfig:
    file_values = config_module.load_toml(args.config) if args.config else {}
    cfg = config_module.build(
        SchedulerConfig,
        file_values,
        {
            "listen": args.listen,
            "manager": args.manager,
            "cluster_key": args.cluster_key,
            "insecure": args.insecure,
            "data_dir": args.data_dir,
        },
    )
    check_listen(cfg.listen)
    return cfg


def run_scheduler(args: argparse.Namespace) -> int:
    cfg = scheduler_config(args)
    scheduler_log = logging.getLogger("dffs.scheduler")
    if scheduler_log.getEffectiveLevel() > logging.INFO:
        scheduler_log.setLevel(logging.INFO)  # one line per scheduling event; --debug adds pieces
    if not scheduler_log.isEnabledFor(logging.DEBUG):
        # gRPC's C core writes its own multi-line errors to stderr (a failed
        # bind, for one), which we already report in one line.  Read when grpc
        # initialises, so before dffs.scheduler.server imports it.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from dffs.scheduler.server import run

    return run(cfg)
