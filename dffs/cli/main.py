"""``dffs`` command line: argument parsing, exit codes, one-line errors.

Exit codes: 0 success, 1 runtime failure, 2 usage error. Errors print one line
on stderr; ``--debug`` adds tracebacks and debug logs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from dffs import __version__
from dffs.errors import DffsError, UsageError
from dffs.log import setup_logging


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _add_get_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url", metavar="URL", nargs="?", help="what to download (http, https, s3 or file URL; a directory with -r)"
    )
    parser.add_argument("-O", "--output", required=True, metavar="PATH", help="where to write it (a directory with -r)")
    parser.add_argument(
        "--recursive", "-r", action="store_true", help="every file below URL/ (autoindex, S3 prefix) or in --manifest"
    )
    parser.add_argument("--manifest", metavar="FILE", help="with --recursive: the dataset's JSON-lines manifest")
    parser.add_argument("--socket", metavar="PATH", help="a running daemon's socket (default: DATA_DIR/dffs.sock)")
    parser.add_argument("--scheduler", metavar="ADDR[,ADDR...]", help="schedulers for P2P")
    parser.add_argument("--manager", metavar="ADDR", help="manager that hands out schedulers")
    parser.add_argument("--data-dir", metavar="DIR", help="piece storage (default /var/lib/dffs)")
    parser.add_argument("--digest", metavar="ALGO:HEX", help="verify the whole file, e.g. sha256:<hex>")
    parser.add_argument("--tag", default="", help="tag that separates tasks of the same URL")
    parser.add_argument("--application", default="", help="application name, part of the task ID")
    parser.add_argument(
        "--header", action="append", default=[], metavar="'K: V'", help="request header for the origin (repeatable)"
    )
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long (default: never)")
    parser.add_argument("--concurrency", type=int, metavar="N", help="pieces in flight at once (default 8)")
    parser.add_argument("--config", metavar="FILE", help="TOML file with defaults for these flags")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    from dffs.cli.cluster import add_cluster_arguments

    add_cluster_arguments(parser)


def _base_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = _Parser(prog="dffs", description="P2P file distribution with a lazy FUSE filesystem")
    parser.add_argument("--version", action="version", version=f"dffs {__version__}")
    parser.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    return parser, commands


def _add_image_command(commands: argparse._SubParsersAction) -> None:
    from dffs.cli.image import add_image_arguments

    image = commands.add_parser("image", help="container images for the dffs snapshotter (pull, containerd-config)")
    add_image_arguments(image, _Parser)


def build_image_parser() -> argparse.ArgumentParser:
    """Only ``dffs image``: a pull is on a container's start path, and the full parser
    imports the FUSE and daemon stacks (over a second of a loaded host's time)."""
    parser, commands = _base_parser()
    _add_image_command(commands)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser() -> argparse.ArgumentParser:
    parser, commands = _base_parser()
    get = commands.add_parser("get", help="download a URL to a file through dffs")
    _add_get_arguments(get)

    from dffs.cli.mount import add_daemon_arguments, add_host_arguments, add_mount_arguments

    mount = commands.add_parser("mount", help="mount the lazy filesystem in the foreground")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT")
    add_daemon_arguments(mount)
    add_host_arguments(mount)
    add_mount_arguments(mount)
    mount.add_argument("--verbose", "-v", action="store_true", help="log each mount event")
    daemon = commands.add_parser("daemon", help="run the per-host daemon (for now: its FUSE mount)")
    daemon.add_argument("--mount", metavar="MOUNTPOINT", help="serve the lazy filesystem here")
    add_daemon_arguments(daemon)
    add_host_arguments(daemon)
    add_mount_arguments(daemon)
    daemon.add_argument(
        "--snapshotter",
        action="store_true",
        help="also serve containerd's snapshots API on DATA_DIR/snapshotter.sock (lazy image layers)",
    )
    daemon.add_argument("--verbose", "-v", action="store_true", help="log each event")

    from dffs.cli.scheduler import add_scheduler_arguments

    scheduler = commands.add_parser("scheduler", help="run the scheduler (parent choice for P2P)")
    add_scheduler_arguments(scheduler)

    from dffs.cli.manager import add_manager_arguments

    manager = commands.add_parser("manager", help="run the manager (cluster membership, config, jobs)")
    add_manager_arguments(manager)

    from dffs.cli.ctl import add_ctl_arguments

    ctl = commands.add_parser("ctl", help="inspect and control a running daemon (tasks, import, export, gc)")
    add_ctl_arguments(ctl, _Parser)

    _add_image_command(commands)

    from dffs.cli.up import add_up_arguments

    up = commands.add_parser("up", help="manager, scheduler, seed and daemon with the mount, on this host")
    add_up_arguments(up)

    from dffs.cli.cluster import add_cluster_command

    add_cluster_command(commands)
    return parser


def run(argv: Sequence[str]) -> int:
    debug = "--debug" in argv
    setup_logging(logging.DEBUG if debug else logging.WARNING)
    try:
        from dffs.lifeline import bind_to_supervisor

        bind_to_supervisor()  # a child of `dffs up`: dies with it
        args = (build_image_parser() if _command(argv) == "image" else build_parser()).parse_args(argv)
        if args.command in ("mount", "daemon", "scheduler", "manager", "up"):
            from dffs.rlimit import raise_open_file_limit

            raise_open_file_limit()  # servers: descriptors for task files, sockets, streams
        if args.command == "get":
            from dffs.cli.get import run_get

            return run_get(args)
        if args.command in ("mount", "daemon"):
            from dffs.cli.mount import run_mount

            return run_mount(args)
        if args.command == "scheduler":
            from dffs.cli.scheduler import run_scheduler

            return run_scheduler(args)
        if args.command == "manager":
            from dffs.cli.manager import run_manager

            return run_manager(args)
        if args.command == "up":
            from dffs.cli.up import run_up

            return run_up(args)
        if args.command == "image":
            from dffs.cli.image import run_image

            return run_image(args)
        if args.command == "ctl":
            from dffs.cli.ctl import run_ctl

            return run_ctl(args)
        if args.command == "cluster":
            from dffs.cli.cluster import run_cluster

            return run_cluster(args)
        raise UsageError(f"unknown command {args.command!r}")
    except DffsError as exc:
        if debug:
            logging.getLogger("dffs").exception("failed")
        print(f"dffs: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dffs: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line unless --debug
        if debug:
            raise
        print(f"dffs: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(sys.argv[1:] if argv is None else list(argv)))


def dfget_main() -> None:
    """``dfget URL -O PATH ...``: the same as ``dffs get``."""
    argv = sys.argv[1:]
    flags = [a for a in argv if a == "--debug"]
    sys.exit(run([*flags, "get", *[a for a in argv if a != "--debug"]]))


if __name__ == "__main__":
    main()
