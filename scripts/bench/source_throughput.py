#!/usr/bin/env python3
"""Back-to-source throughput: nginx on loopback -> dffs, side by side with curl.

Measures, for one object (default 1 GiB), the median of N runs of:

  curl -o /dev/null           the network path alone (competitor ceiling)
  curl -o FILE                the origin into a file on the data dir's disk (competitor)
  h11 only -> buffer          h11 framing every body byte (why dffs does not do this)
  dffs http -> buffer         dffs's source layer alone, one stream, recv_into
  dffs stream -> storage      one GET cut into pieces, digested and written (the issue's >= 1 GB/s)
  dffs 8 ranged -> storage    8 ranged piece GETs at once into storage (dffs get's default)
  dffs stream -> tmpfs        the same with the data dir in memory: the software's ceiling
  dffs get (CLI, cold)        the whole command, process start to output file
  dffs get (CLI, cached)      the same again with the pieces already local (revalidate + export)

The machine's disk and hypervisor make file writes noisy (first-touch of guest
memory shows up as system time), so each figure is a median of --runs runs,
each started after a sync, with setup (deleting the last run's files) untimed.

Prints a table, ratios against curl, and one JSON line. Usage:
  .venv/bin/python scripts/bench/source_throughput.py [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h11
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, machine, make_file, nginx_serving  # noqa: E402

from dffs.peertask import DownloadRequest, TaskManager  # noqa: E402
from dffs.source import SourceRegistry  # noqa: E402
from dffs.storage import StorageManager  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


async def h11_only(url: str) -> int:
    """A plain h11 client: every body byte goes through h11's buffer."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    conn = h11.Connection(h11.CLIENT)
    path = "/" + url.split("//")[1].split("/", 1)[1]
    await stream.send_all(conn.send(h11.Request(method="GET", target=path, headers=[("Host", host)])))
    await stream.send_all(conn.send(h11.EndOfMessage()))
    total = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(1 << 20))
        elif isinstance(event, h11.Data):
            total += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            break
    await stream.aclose()
    return total


async def dffs_http_to_buffer(url: str) -> int:
    sources = SourceRegistry()
    buffer = memoryview(bytearray(4 << 20))
    total = 0
    async with sources.for_url(url).open_stream(url) as body:
        while got := await body.readinto(buffer):
            total += got
    await sources.aclose()
    return total


async def dffs_to_storage(url: str, data_dir: Path, mode: str) -> None:
    storage = StorageManager(data_dir)
    sources = SourceRegistry()
    async with TaskManager(storage, sources) as tasks:
        task = await tasks.open(DownloadRequest(url))
        if mode == "stream":
            await task._fetch_streamed(lambda n: None)
        else:
            await task.fetch_all(concurrency=8)
        assert task.store.is_complete()
    storage.close()
    await sources.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default="/var/tmp/dffs-bench", help="on the disk a data dir would use")
    args = parser.parse_args()
    size = args.size_mib << 20
    work = Path(args.workdir)
    (work / "www").mkdir(parents=True, exist_ok=True)
    make_file(work / "www" / "object.bin", size)
    data_dir = work / "data"
    out = work / "out.bin"
    results: dict[str, float] = {}

    with nginx_serving(work / "www") as base:
        url = f"{base}/object.bin"
        # warm the origin's page cache so every contender reads it from memory
        subprocess.run(["curl", "-s", "-o", "/dev/null", url], check=True)

        def record(name, fn, before=None):
            median, times = best_of(args.runs, fn, before)
            results[name] = size / median / 1e9
            print(f"{name:28s} {results[name]:6.2f} GB/s   runs: {', '.join(f'{t:.2f}s' for t in times)}", flush=True)

        record("curl -> /dev/null", lambda: subprocess.run(["curl", "-s", "-o", "/dev/null", url], check=True))
        record("curl -> file", lambda: subprocess.run(["curl", "-s", "-o", str(out), url], check=True))
        out.unlink(missing_ok=True)
        record("h11 only -> buffer", lambda: trio.run(h11_only, url))
        record("dffs http -> buffer", lambda: trio.run(dffs_http_to_buffer, url))

        def wipe(path=data_dir):
            return lambda: shutil.rmtree(path, ignore_errors=True)

        record("dffs stream -> storage", lambda: trio.run(dffs_to_storage, url, data_dir, "stream"), wipe())
        record("dffs 8 ranged -> storage", lambda: trio.run(dffs_to_storage, url, data_dir, "ranged"), wipe())
        shm = Path(tempfile.mkdtemp(prefix="dffs-bench.", dir="/dev/shm"))
        try:
            record("dffs stream -> tmpfs", lambda: trio.run(dffs_to_storage, url, shm / "d", "stream"), wipe(shm / "d"))
        finally:
            shutil.rmtree(shm, ignore_errors=True)

        def cli_cold():
            subprocess.run(
                [str(REPO / ".venv/bin/dffs"), "get", url, "-O", str(out), "--data-dir", str(data_dir)], check=True
            )

        def wipe_all():
            shutil.rmtree(data_dir, ignore_errors=True)
            out.unlink(missing_ok=True)

        record("dffs get (CLI, cold)", cli_cold, wipe_all)
        record("dffs get (CLI, cached)", cli_cold, lambda: out.unlink(missing_ok=True))
    shutil.rmtree(data_dir, ignore_errors=True)
    out.unlink(missing_ok=True)

    curl_file = results["curl -> file"]
    print()
    for name in ("dffs stream -> storage", "dffs 8 ranged -> storage", "dffs get (CLI, cold)"):
        print(f"{name} / curl -> file = {results[name] / curl_file:.2f}x")
    print(f"dffs http -> buffer / h11 only = {results['dffs http -> buffer'] / results['h11 only -> buffer']:.2f}x")
    print(
        json.dumps(
            {
                "bench": "source_throughput",
                "size_bytes": size,
                "runs": args.runs,
                "gbps": {k: round(v, 3) for k, v in results.items()},
                "machine": machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
