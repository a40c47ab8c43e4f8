"""``dffs manager``: cluster membership, dynamic config and jobs, in the foreground."""

from __future__ import annotations

import argparse
import logging
import os

from dffs import config as config_module
from dffs.manager.config import DEFAULT_DB, DEFAULT_HTTP_LISTEN, DEFAULT_LISTEN, ManagerConfig, check_host_port


def add_manager_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", metavar="ADDR", help=f"gRPC address, HOST:PORT (default {DEFAULT_LISTEN})")
    parser.add_argument(
        "--http-listen", metavar="ADDR", help=f"JSON HTTP API address, HOST:PORT (default {DEFAULT_HTTP_LISTEN})"
    )
    parser.add_argument(
        "--db", metavar="URL", help=f"sqlite:///PATH or postgresql://USER@HOST:PORT/DB (default {DEFAULT_DB})"
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file with defaults for these flags and the tunables")
    parser.add_argument(
        "--data-dir", metavar="DIR", help="a one-host cluster's key and the API token's hash (default /var/lib/dffs)"
    )
    from dffs.cli.cluster import add_cluster_arguments

    add_cluster_arguments(parser)


def manager_config(args: argparse.Namespace) -> ManagerConfig:
    from dffs.manager.db import sqlalchemy_url

    file_values = config_module.load_toml(args.config) if args.config else {}
    cfg = config_module.build(
        ManagerConfig,
        file_values,
        {
            "listen": args.listen,
            "http_listen": args.http_listen,
            "db": args.db,
            "cluster_key": args.cluster_key,
            "insecure": args.insecure,
            "data_dir": args.data_dir,
        },
    )
    check_host_port(cfg.listen, "--listen")
    if cfg.http_listen:
        check_host_port(cfg.http_listen, "--http-listen")
    sqlalchemy_url(cfg.db)  # UsageError (exit 2) for an unsupported URL
    return cfg


def run_manager(args: argparse.Namespace) -> int:
    cfg = manager_config(args)
    manager_log = logging.getLogger("dffs.manager")
    if manager_log.getEffectiveLevel() > logging.INFO:
        manager_log.setLevel(logging.INFO)  # one line per membership event
    if not manager_log.isEnabledFor(logging.DEBUG):
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from dffs.manager.server import run

    return run(cfg)
