"""``dffs ctl``: inspect and control a running daemon over its Unix socket (and the manager's jobs).

::

    dffs ctl [--socket PATH | --data-dir DIR] [--json] tasks
    dffs ctl stat TASK|URL          dffs ctl rm TASK|URL
    dffs ctl import FILE --url URL  dffs ctl export TASK|URL -O PATH
    dffs ctl gc
    dffs ctl --manager ADDR preheat URL... [--recursive] [--scope seed|all-seeds|all] [--cluster-id N]...
                                           [--wait] [--timeout S]
    dffs ctl --manager ADDR jobs [ID] [--state S] [--limit N]

TASK is a 64-hex task ID; a URL names the task every peer derives from it
(with ``--tag``/``--application`` when the task was made with them). Output
is a table (or key: value lines) for people, ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dffs.config import DEFAULT_DATA_DIR
from dffs.errors import DffsError, UsageError
from dffs.idgen import is_task_id

#: Quick calls (list, stat, rm, gc, health) give up after this long.
_QUICK = 30.0


def add_ctl_arguments(parser: argparse.ArgumentParser, parser_class) -> None:
    common = parser_class(add_help=False)
    common.add_argument(
        "--socket", metavar="PATH", default=argparse.SUPPRESS, help="the daemon's socket (default: DATA_DIR/dffs.sock)"
    )
    common.add_argument(
        "--data-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="the daemon's data dir, to find its socket (default /var/lib/dffs)",
    )
    common.add_argument("--manager", metavar="ADDR", default=argparse.SUPPRESS, help="manager (preheat, jobs)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument(
        "--cluster-key",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="the cluster key, to talk to the manager (default /etc/dffs/cluster.key, or DATA_DIR/cluster.key)",
    )
    common.add_argument(
        "--insecure", action="store_true", default=argparse.SUPPRESS, help="talk to the manager in plain text"
    )
    for action in common._actions:
        if action.dest != "help":
            parser._add_action(action)
    commands = parser.add_subparsers(dest="ctl_command", metavar="SUBCOMMAND", parser_class=parser_class)
    commands.required = True

    def task_arguments(sub):
        sub.add_argument("target", metavar="TASK|URL", help="task ID (64 hex digits) or URL")
        sub.add_argument("--tag", default="", help="tag the task was made with")
        sub.add_argument("--application", default="", help="application the task was made with")

    commands.add_parser("tasks", parents=[common], help="tasks in the cache: URL, size, pieces, last access")
    task_arguments(commands.add_parser("stat", parents=[common], help="one task in detail"))
    task_arguments(commands.add_parser("rm", parents=[common], help="delete a task from the cache"))
    imp = commands.add_parser("import", parents=[common], help="seed a local file into P2P as URL (no origin)")
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--url", required=True, help="the URL other hosts will ask for")
    imp.add_argument("--tag", default="", help="tag, part of the task ID")
    imp.add_argument("--application", default="", help="application, part of the task ID")
    exp = commands.add_parser("export", parents=[common], help="copy a task's content to a file")
    task_arguments(exp)
    exp.add_argument("-O", "--output", required=True, metavar="PATH", help="where to write it")
    exp.add_argument("--local-only", action="store_true", help="fail rather than download missing pieces")
    commands.add_parser("gc", parents=[common], help="run the cache GC now")

    pre = commands.add_parser("preheat", parents=[common], help="have the manager preheat URLs or images")
    pre.add_argument("urls", nargs="+", metavar="URL")
    pre.add_argument(
        "--recursive", "-r", action="store_true", help="each URL/ is a directory: preheat every file below it"
    )
    pre.add_argument("--scope", choices=("seed", "all-seeds", "all"), default="seed")
    pre.add_argument("--cluster-id", type=int, action="append", default=[], metavar="N")
    pre.add_argument("--wait", action="store_true", help="wait until the job finishes")
    pre.add_argument("--timeout", type=float, metavar="S", help="give up waiting after this long")
    pre.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'K: V'",
        help="request header for the origin or registry (repeatable), e.g. Authorization",
    )
    pre.add_argument("--platform", metavar="OS/ARCH", help="which manifest of a multi-platform image (linux/amd64)")
    pre.add_argument("--tag", help="tag, part of the task ID")
    pre.add_argument("--application", help="application, part of the task ID")
    jobs = commands.add_parser("jobs", parents=[common], help="the manager's jobs")
    jobs.add_argument("id", nargs="?", type=int, metavar="ID")
    jobs.add_argument("--state", metavar="S")
    jobs.add_argument("--limit", type=int, metavar="N")


# ------------------------------------------------------------------ helpers


def socket_path(args: argparse.Namespace) -> Path:
    if getattr(args, "socket", None):
        return Path(args.socket)
    return Path(getattr(args, "data_dir", None) or DEFAULT_DATA_DIR) / "dffs.sock"


class _Client:
    """A DfdaemonDownload stub on the daemon's socket, with one-line errors."""

    def __init__(self, path: Path):
        import grpc

        from dffs.api import dfdaemon_pb2_grpc

        self.path = path
        if not path.exists():
            raise DffsError(f"no daemon is running at {path} (start one with: dffs daemon --data-dir DIR)")
        self.channel = grpc.insecure_channel(f"unix:{path.absolute()}")
        self.stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(self.channel)

    def call(self, name: str, request, timeout: float | None = _QUICK):
        import grpc

        try:
            return getattr(self.stub, name)(request, timeout=timeout)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE and ("connect" in details.lower() or "socket" in details.lower()):
                raise DffsError(f"no daemon is answering at {self.path}: {details}") from None
            if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in details.lower():
                raise DffsError(f"not allowed to use {self.path} (run as the daemon's user)") from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise UsageError(details) from None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise DffsError(f"the daemon at {self.path} does not support {name} (an older version?)") from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DffsError(f"the daemon at {self.path} did not answer {name} within {timeout:g}s") from None
            raise DffsError(details or code.name) from None

    def close(self) -> None:
        self.channel.close()


def _target(args) -> tuple[str, str | None]:
    """(task id, URL or None) for a TASK|URL argument."""
    from dffs.idgen import task_id

    value = args.target.strip()
    if is_task_id(value):
        return value, None
    if "://" not in value:
        raise UsageError(f"{value!r} is neither a task ID (64 hex digits) nor a URL")
    return task_id(value, tag=args.tag, application=args.application), value


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


def task_dict(t) -> dict:
    task = t.task
    return {
        "task_id": task.id,
        "url": task.url,
        "tag": task.tag,
        "application": task.application,
        "size": task.content_length,
        "piece_length": task.piece_length,
        "piece_count": task.piece_count,
        "pieces_present": t.present_piece_count,
        "present_bytes": t.present_bytes,
        "disk_bytes": t.disk_bytes,
        "state": task.state,
        "imported": t.imported,
        "active": t.active,
        "created_at": task.created_at.ToNanoseconds() / 1e9,
        "last_access": t.last_access.ToNanoseconds() / 1e9,
    }


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths[:-1], strict=True)) + "  " + row[-1])


# --------------------------------------------------------------- commands


def run_ctl(args: argparse.Namespace) -> int:
    command = args.ctl_command
    if command == "preheat":
        from dffs.cli.ctl_manager import run_preheat

        return run_preheat(args)
    if command == "jobs":
        from dffs.cli.ctl_manager import run_jobs

        return run_jobs(args)
    as_json = getattr(args, "json", False)
    # Checked before connecting, so a typo is a usage error even with no daemon.
    if command in ("stat", "rm", "export"):
        target = _target(args)
    if command == "import":
        path = Path(args.file).absolute()
        if not path.is_file():
            raise UsageError(f"{args.file}: no such file")
        if "://" not in args.url:
            raise UsageError(f"--url {args.url!r} is not a URL")
    if command == "export":
        output = Path(args.output).absolute()
        if not output.parent.is_dir():
            raise UsageError(f"cannot write {output}: {output.parent} is not a directory")
    from dffs.api import common_pb2, dfdaemon_pb2

    client = _Client(socket_path(args))
    try:
        if command == "tasks":
            tasks = [task_dict(t) for t in client.call("ListTasks", dfdaemon_pb2.ListTasksRequest()).tasks]
            if as_json:
                _print_json(tasks)
            elif not tasks:
                print("no tasks")
            else:
                rows = [["TASK", "SIZE", "PIECES", "LAST ACCESS", "URL"]]
                rows += [
                    [
                        t["task_id"][:16],
                        _size(t["size"]),
                        f"{t['pieces_present']}/{t['piece_count']}",
                        _when(t["last_access"]),
                        t["url"],
                    ]
                    for t in tasks
                ]
                _table(rows)
        elif command == "stat":
            t = task_dict(client.call("StatTask", dfdaemon_pb2.StatTaskRequest(task_id=target[0])))
            if as_json:
                _print_json(t)
            else:
                for key, value in t.items():
                    if key in ("created_at", "last_access"):
                        value = _when(value)
                    print(f"{key}: {value}")
        elif command == "rm":
            client.call("DeleteTask", dfdaemon_pb2.DeleteTaskRequest(task_id=target[0]))
            if as_json:
                _print_json({"deleted": target[0]})
            else:
                print(f"deleted {target[0]}")
        elif command == "import":
            download = common_pb2.Download(url=args.url, tag=args.tag, application=args.application)
            t = task_dict(
                client.call(
                    "ImportTask", dfdaemon_pb2.ImportTaskRequest(path=str(path), download=download), timeout=None
                )
            )
            if as_json:
                _print_json(t)
            else:
                print(
                    f"imported {path} as {t['url']}: task {t['task_id']}, {t['size']} bytes, {t['piece_count']} pieces"
                )
        elif command == "export":
            request = dfdaemon_pb2.ExportTaskRequest(output_path=str(output), local_only=args.local_only)
            tid, url = target
            if url is None:
                request.task_id = tid
            else:
                request.download.CopyFrom(common_pb2.Download(url=url, tag=args.tag, application=args.application))
            t = task_dict(client.call("ExportTask", request, timeout=None))
            if as_json:
                _print_json({**t, "output": str(output)})
            else:
                print(f"exported {t['task_id']} ({t['size']} bytes) to {output}")
        elif command == "gc":
            r = client.call("RunGC", dfdaemon_pb2.RunGCRequest(), timeout=None)
            result = {
                "evicted_tasks": r.evicted_tasks,
                "evicted_pieces": r.evicted_pieces,
                "freed_bytes": r.freed_bytes,
                "used_bytes": r.used_bytes,
                "quota_bytes": r.quota_bytes,
                "high_watermark_bytes": r.high_watermark_bytes,
                "low_watermark_bytes": r.low_watermark_bytes,
            }
            if as_json:
                _print_json(result)
            else:
                quota = f" of a {_size(r.quota_bytes)} quota" if r.quota_bytes else " (no quota)"
                print(
                    f"evicted {r.evicted_tasks} tasks and {r.evicted_pieces} pieces, freed {_size(r.freed_bytes)};"
                    f" {_size(r.used_bytes)} used{quota}"
                )
        else:
            raise UsageError(f"unknown ctl command {command!r}")
    finally:
        client.close()
    sys.stdout.flush()
    return 0


def health(path: Path, timeout: float = 5.0) -> bool:
    """Whether a daemon answers on ``path`` (for scripts and tests)."""
    from google.protobuf import empty_pb2

    try:
        client = _Client(path)
    except DffsError:
        return False
    try:
        client.call("Health", empty_pb2.Empty(), timeout=timeout)
        return True
    except DffsError:
        return False
    finally:
        client.close()


__all__ = ["add_ctl_arguments", "health", "run_ctl", "socket_path"]
