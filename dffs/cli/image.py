"""``dffs image pull`` and ``dffs image containerd-config``."""

from __future__ import annotations

import argparse
from pathlib import Path

from dffs.config import DEFAULT_DATA_DIR
from dffs.errors import UsageError


def add_image_arguments(parser: argparse.ArgumentParser, parser_class) -> None:
    commands = parser.add_subparsers(dest="image_command", metavar="COMMAND", parser_class=parser_class)
    commands.required = True
    pull = commands.add_parser("pull", help="pull an image into containerd for the dffs snapshotter, lazily")
    pull.add_argument("ref", metavar="REF", help="HOST[:PORT]/REPO[:TAG|@sha256:HEX]")
    pull.add_argument("--containerd", required=True, metavar="SOCK", help="containerd's gRPC socket")
    pull.add_argument("--namespace", default="default", metavar="NS", help="containerd namespace (default: default)")
    pull.add_argument("--plain-http", action="store_true", help="the registry speaks plain HTTP")
    pull.add_argument("--platform", default="", metavar="P", help="os/arch[/variant] (default linux/amd64)")
    pull.add_argument("--snapshotter", default="dffs", help="containerd's name for the dffs snapshotter")
    pull.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="per call (default 60)")
    pull.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        metavar="DIR",
        help="the local dffs daemon's data dir: the image's documents are shared through its swarm, "
        "and come from it when the registry is gone",
    )
    config = commands.add_parser("containerd-config", help="print containerd's config fragment for dffs")
    config.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), metavar="DIR", help="the daemon's data dir")
    config.add_argument("--registry", metavar="HOST[:PORT]", help="also print a hosts.toml for this registry")
    config.add_argument("--mirror", default="http://127.0.0.1:4001", metavar="URL", help="the daemon's proxy")


def run_image(args: argparse.Namespace) -> int:
    if args.image_command == "containerd-config":
        from dffs.image.config import hosts_toml, proxy_plugin

        print(proxy_plugin(Path(args.data_dir)), end="")
        if args.registry:
            print()
            print(hosts_toml(args.registry, args.mirror), end="")
        return 0
    if args.image_command == "pull":
        from dffs.image.pull import pull

        if args.timeout <= 0:
            raise UsageError("--timeout must be positive")
        result = pull(
            args.ref,
            args.containerd,
            namespace=args.namespace,
            plain_http=args.plain_http,
            platform=args.platform,
            snapshotter=args.snapshotter,
            timeout=args.timeout,
            daemon_socket=Path(args.data_dir) / "dffs.sock",
        )
        print(
            f"{result.name} {result.manifest_digest} lazy={len(result.lazy)} unpacked={len(result.unpacked)} "
            f"present={len(result.present)} seconds={result.seconds:.2f} "
            + " ".join(f"{k}={v:.2f}" for k, v in result.phases.items()),
            flush=True,
        )
        return 0
    raise UsageError(f"unknown image command {args.image_command!r}")
