#!/usr/bin/env python3
"""Piece transfers between two members: what securing the data plane costs.

A real upload server (a process of its own, built by the daemon's own
``piece_data_plane``, dffs/daemon/dataplane.py) holds one task; a real piece client (this process, built
the same way) fetches every piece of it with ``--streams`` concurrent workers,
as the P2P fetcher does, each piece checked against its known digest (the
anchored digest the fetcher passes). Contenders, one per data-plane setting:

  signed    the default: every request HMAC-signed with the cluster's piece key
            (dffs/security/pieceauth.py), bodies by sendfile, not encrypted
  insecure  ``--insecure``: no piece auth, bodies by sendfile
  tls       ``data_plane = "tls"``: mutual TLS with member certificates
            (``Transport.piece_tls()``); bodies read and encrypted in user space

Figures per run: GB/s over the whole task; CPU seconds per GiB moved of the
client (this process) and of the server (its /proc stat), both taken over the
timed fetch only; the connections the server accepted; and µs per piece
request, from a second, sequential phase of one stream fetching tiny pieces
(so the request's own cost — signing, checking, TLS records — dominates).

Cold and warm: a fresh server process with a fresh certificate for every
contender in every run (untimed), so each starts without connections or TLS
sessions; the content file is in the page cache for all (read just before,
untimed), as a parent's freshly fetched pieces are. Loopback only.
Usage:

  .venv/bin/python scripts/bench/pieces.py [--size-mib 1024] [--streams 8] [--requests 4000] [--runs 3]
      [--contenders signed,insecure,tls] [--smoke]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parents[1] / "tests")]
import harness  # noqa: E402
from common import MiB, run, warm_page_cache  # noqa: E402

GiB = 1024 * MiB
#: The piece length dffs uses for objects up to 4 GiB (idgen.piece_length_for).
PIECE = 4 * MiB
#: Pieces of the request-cost phase: small enough that the request, not the bytes, is what is timed.
SMALL_PIECE = 16 * 1024
BIG_TASK = "b1" * 32
SMALL_TASK = "5a" * 32
MODES = ("signed", "insecure", "tls")


def _config(mode: str, data_dir: Path, hostname: str, key: Path) -> Any:
    """A daemon's config on loopback for ``mode`` (an ephemeral upload port)."""
    from dffs.daemon.config import DaemonConfig

    return DaemonConfig(
        data_dir=data_dir,
        ip="127.0.0.1",
        hostname=hostname,
        upload_port=0,
        insecure=mode == "insecure",
        cluster_key=None if mode == "insecure" else str(key),
        data_plane="tls" if mode == "tls" else "signed",
    )


def _transport(cfg: Any) -> Any:
    """The transport a daemon with ``cfg`` makes (as dffs/daemon/server.py does)."""
    from dffs.security.ca import Identity
    from dffs.security.setup import make_transport

    return make_transport(
        "daemon",
        Identity("daemon", cfg.host_id),
        cluster_key=cfg.cluster_key,
        insecure_ok=cfg.insecure,
        data_dir=cfg.data_dir,
        addresses=[cfg.ip],
        cert_addresses=(cfg.ip,),
    )


# -- the parent: a process of its own, so its CPU time is its own ------------------


def serve(mode: str, data_dir: Path, key: Path) -> None:
    """Serve the tasks in ``data_dir``; print the port, then, once stdin closes, the server's stats."""
    import attrs
    import trio

    from dffs.daemon.dataplane import piece_data_plane
    from dffs.storage import StorageManager

    async def main() -> None:
        storage = StorageManager(data_dir)
        cfg = _config(mode, data_dir, "bench-parent", key)
        server, client = piece_data_plane(cfg, _transport(cfg), storage)
        try:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(server.serve)
                print(f"port {port}", flush=True)
                await trio.to_thread.run_sync(sys.stdin.read)
                nursery.cancel_scope.cancel()
        finally:
            await client.aclose()
            storage.close()
        print(json.dumps(attrs.asdict(server.stats)), flush=True)

    trio.run(main)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` (every thread) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Parent:
    """The server process of one contender in one run."""

    def __init__(self, mode: str, data_dir: Path, key: Path):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", mode, "--data-dir", str(data_dir), "--key", str(key)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.proc.kill()
            raise RuntimeError(f"the {mode} upload server did not start (said {line!r})")
        self.port = int(line.split()[1])

    def stop(self) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=60)
        if self.proc.returncode != 0:
            raise RuntimeError(f"the upload server exited with {self.proc.returncode}")
        return dict(json.loads(out.strip().splitlines()[-1]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- the child: this process ---------------------------------------------------------


def fetch(
    mode: str,
    work: Path,
    key: Path,
    parent: Parent,
    digests: dict[str, list[bytes]],
    lengths: dict[str, int],
    streams: int,
) -> dict[str, float]:
    """Fetch every piece of the big task with ``streams`` workers, then the small task's pieces one by one.
    CPU times (this process's and the parent's) are taken over the big fetch only."""
    import trio

    from dffs.daemon.dataplane import piece_data_plane
    from dffs.storage import StorageManager

    async def big(client: Any) -> float:
        count = len(digests[BIG_TASK])
        numbers = iter(range(count))

        async def worker() -> None:
            buffer = bytearray(PIECE)
            for n in numbers:
                length = min(PIECE, lengths[BIG_TASK] - n * PIECE)
                view = memoryview(buffer)[:length]
                await client.fetch("127.0.0.1", parent.port, BIG_TASK, n, view, expected_digest=digests[BIG_TASK][n])

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(worker)
        return time.perf_counter() - started

    async def small(client: Any) -> float:
        buffer = bytearray(SMALL_PIECE)
        started = time.perf_counter()
        for n, digest in enumerate(digests[SMALL_TASK]):
            await client.fetch("127.0.0.1", parent.port, SMALL_TASK, n, buffer, expected_digest=digest)
        return (time.perf_counter() - started) / len(digests[SMALL_TASK])

    async def main() -> dict[str, float]:
        data_dir = work / "child"
        storage = StorageManager(data_dir)  # the child's own (unused): piece_data_plane builds its server too
        cfg = _config(mode, data_dir, "bench-child", key)
        _, client = piece_data_plane(cfg, _transport(cfg), storage)
        try:
            cpu, server_cpu = time.process_time(), _cpu_seconds(parent.proc.pid)
            seconds = await big(client)
            cpu, server_cpu = time.process_time() - cpu, _cpu_seconds(parent.proc.pid) - server_cpu
            per_request = await small(client)
        finally:
            await client.aclose()
            storage.close()
        return {"seconds": seconds, "client cpu": cpu, "server cpu": server_cpu, "per request": per_request}

    return trio.run(main)


def make_tasks(data_dir: Path, size: int, requests: int) -> tuple[dict[str, list[bytes]], dict[str, int]]:
    """The parent's two tasks (random bytes, every piece verified): the big one and the small-piece one."""
    from dffs.storage import StorageManager, TaskMeta

    storage = StorageManager(data_dir)
    digests: dict[str, list[bytes]] = {}
    lengths = {BIG_TASK: size, SMALL_TASK: requests * SMALL_PIECE}
    try:
        for task_id, piece in ((BIG_TASK, PIECE), (SMALL_TASK, SMALL_PIECE)):
            meta = TaskMeta(
                task_id=task_id, url=f"http://bench/{task_id[:4]}", content_length=lengths[task_id], piece_length=piece
            )
            store = storage.create_task(meta)
            digests[task_id] = [
                store.write_piece(n, os.urandom(min(piece, lengths[task_id] - n * piece)))
                for n in range(meta.piece_count)
            ]
    finally:
        storage.close()
    return digests, lengths


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--size-mib", type=int, help="the big task's size (default 1024; --smoke: 16)")
    p.add_argument("--streams", type=int, default=8, help="concurrent piece fetches (the P2P fetcher's 8)")
    p.add_argument("--requests", type=int, help="tiny-piece requests timed one by one (default 4000; --smoke: 20)")
    p.add_argument("--workdir", default=None, help="where the run's temp dir goes (default: the system's)")
    p.add_argument(
        "--contenders",
        default=",".join(MODES),
        help=f"comma-separated, of {', '.join(MODES)} (default: all; one alone, e.g. to profile it)",
    )
    p.add_argument("--serve", choices=MODES, help=argparse_hidden())
    p.add_argument("--data-dir", help=argparse_hidden())
    p.add_argument("--key", help=argparse_hidden())
    args = harness.parse(p, size_mib=(1024, 16), requests=(4000, 20))
    if args.serve:
        serve(args.serve, Path(args.data_dir), Path(args.key))
        return
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if not contenders or not set(contenders) <= set(MODES):
        p.error(f"--contenders: choose from {', '.join(MODES)}")
    size = args.size_mib * MiB
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dffs-pieces.", dir=args.workdir))
    bench = harness.Bench(
        "pieces",
        contenders=contenders,
        figures=[
            harness.Figure("throughput", "GB/s"),
            harness.Figure("client CPU", "s/GiB", lower_is_better=True),
            harness.Figure("server CPU", "s/GiB", lower_is_better=True),
            harness.Figure("piece request", "us", lower_is_better=True, digits=0),
            harness.Figure("connections", "count", lower_is_better=True, digits=0),
        ],
        comparisons=[
            harness.Comparison(a, b)
            for a, b in (("signed", "insecure"), ("tls", "insecure"), ("signed", "tls"))
            if a in contenders and b in contenders
        ],
        params={
            "size_bytes": size,
            "piece_bytes": PIECE,
            "streams": args.streams,
            "requests": args.requests,
            "request_piece_bytes": SMALL_PIECE,
            "smoke": args.smoke,
        },
        runs=args.runs,
    )
    parent_dir = work / "parent"
    parent: Parent | None = None
    try:
        key = work / "cluster.key"
        run([sys.executable, "-m", "dffs", "cluster", "init", str(key)])
        digests, lengths = make_tasks(parent_dir, size, args.requests)
        for run_number, mode in bench.schedule():
            shutil.rmtree(work / "child", ignore_errors=True)
            for f in parent_dir.rglob("*"):
                if f.is_file():
                    warm_page_cache(f)
            parent = Parent(mode, parent_dir, key)
            figures = fetch(mode, work, key, parent, digests, lengths, args.streams)
            stats = parent.stop()
            parent = None
            bench.record(
                run_number,
                mode,
                {
                    "throughput": size / figures["seconds"] / 1e9,
                    "client CPU": figures["client cpu"] / (size / GiB),
                    "server CPU": figures["server cpu"] / (size / GiB),
                    "piece request": figures["per request"] * 1e6,
                    "connections": stats["connections_accepted"],
                },
            )
    finally:
        if parent is not None:
            parent.kill()
        shutil.rmtree(work, ignore_errors=True)
    bench.report()


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
