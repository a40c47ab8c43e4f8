#!/usr/bin/env python3
"""Back-to-source throughput: nginx on loopback -> dffs, side by side with curl and aria2c.

One object (default 1 GiB) on nginx on 127.0.0.1; every contender reads all of
it once per run (GB/s = 10^9 bytes per second of wall time):

  dffs get (CLI, cold)     `dffs get URL -O FILE --data-dir DIR`, process start to output file
  curl -> file             `curl -o FILE`: one stream into a file on the same disk (competitor)
  aria2c -x8 -> file       `aria2c -x8 -s8`: 8 ranged connections into a file (competitor; -s8
                           because -x alone is capped by -s, whose default is 5)
  dffs 8 ranged -> storage 8 ranged piece GETs into storage, in-process (dffs get's engine)
  dffs stream -> storage   one GET cut into pieces, digested and written, in-process
  dffs stream -> tmpfs     the same with the data dir in /dev/shm: the software's ceiling
  dffs get (CLI, cached)   `dffs get` again with the pieces already local (revalidate + verify + export)
  dffs http -> buffer      dffs's source layer alone, one stream, recv_into, no storage
  h11 only -> buffer       h11 framing every body byte (why dffs does not do this)
  curl -> /dev/null        the network path alone (ceiling of the buffer rows)

cold (every contender but "cached"): the contender's output is absent before
the run — the output file deleted, the data dir deleted — and the origin's
copy is in the page cache (read just before, untimed), so every contender
reads the origin from memory and writes into fresh files on the same disk.
cached: a `dffs get` of the object ran just before (untimed) and its output
file was deleted, so the pieces are in the data dir and in the page cache.
Setup (deleting, the untimed get, a sync) is never timed, for any contender.
Each output is checked against the object after its run (untimed).

The in-process rows call dffs's internal API (dffs.peertask, dffs.source); the
smoke test keeps them from rotting when it changes. Prints the harness's table,
ratios and one JSON line. Usage:
  .venv/bin/python scripts/bench/source_throughput.py [--size-mib 1024] [--runs 3] [--smoke]
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import h11
import trio

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parents[1] / "tests")]  # the harness; the tests' real parts
import harness  # noqa: E402
from common import DFFS, MiB, make_file, run, timed, warm_page_cache  # noqa: E402
from origins import NginxOrigin  # noqa: E402

from dffs.peertask import DownloadRequest, TaskManager  # noqa: E402
from dffs.source import SourceRegistry  # noqa: E402
from dffs.storage import StorageManager  # noqa: E402


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
        complete = task.store.is_complete()
    storage.close()
    await sources.aclose()
    if not complete:
        raise RuntimeError(f"dffs {mode} -> storage left the task incomplete")


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--size-mib", type=int, help="object size (default 1024; --smoke: 8)")
    p.add_argument("--workdir", default="/var/tmp/dffs-bench", help="on the disk a data dir would use")
    args = harness.parse(p, size_mib=(1024, 8))
    size = args.size_mib * MiB
    work = Path(args.workdir)
    (work / "www").mkdir(parents=True, exist_ok=True)
    obj = work / "www" / "object.bin"
    make_file(obj, size)
    data_dir, out = work / "data", work / "out.bin"
    shm = Path(tempfile.mkdtemp(prefix="dffs-bench.", dir="/dev/shm"))

    def clean() -> None:
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(shm / "d", ignore_errors=True)
        out.unlink(missing_ok=True)

    def check_out() -> None:
        if not filecmp.cmp(out, obj, shallow=False):
            raise RuntimeError(f"{out} differs from the object")

    def check_total(total: int) -> None:
        if total != size:
            raise RuntimeError(f"read {total} bytes of {size}")

    # name -> (untimed setup, timed action, untimed check)
    Contender = tuple[Callable[[], object], Callable[[], object], Callable[[], object]]
    try:
        with NginxOrigin(work / "www", workdir=work / "nginx") as origin:
            url = origin.url("object.bin")
            get = [*DFFS, "get", url, "-O", str(out), "--data-dir", str(data_dir)]
            aria2c = ["aria2c", "-x8", "-s8", "-q", "--allow-overwrite=true", "--auto-file-renaming=false"]
            aria2c += ["-d", str(out.parent), "-o", out.name, url]
            totals: list[int] = []

            def cached_setup() -> None:
                clean()
                run(get)
                out.unlink()

            def buffer_check() -> None:
                check_total(totals.pop())

            contenders: dict[str, Contender] = {
                "dffs get (CLI, cold)": (clean, lambda: run(get), check_out),
                "curl -> file": (clean, lambda: run(["curl", "-sf", "-o", str(out), url]), check_out),
                "aria2c -x8 -> file": (clean, lambda: run(aria2c), check_out),
                "dffs 8 ranged -> storage": (clean, lambda: trio.run(dffs_to_storage, url, data_dir, "ranged"), clean),
                "dffs stream -> storage": (clean, lambda: trio.run(dffs_to_storage, url, data_dir, "stream"), clean),
                "dffs stream -> tmpfs": (clean, lambda: trio.run(dffs_to_storage, url, shm / "d", "stream"), clean),
                "dffs get (CLI, cached)": (cached_setup, lambda: run(get), check_out),
                "dffs http -> buffer": (clean, lambda: totals.append(trio.run(dffs_http_to_buffer, url)), buffer_check),
                "h11 only -> buffer": (clean, lambda: totals.append(trio.run(h11_only, url)), buffer_check),
                "curl -> /dev/null": (clean, lambda: run(["curl", "-sf", "-o", "/dev/null", url]), lambda: None),
            }
            bench = harness.Bench(
                "source_throughput",
                contenders=list(contenders),
                figures=[harness.Figure("throughput", "GB/s")],
                comparisons=[
                    harness.Comparison("dffs get (CLI, cold)", "curl -> file"),
                    harness.Comparison("dffs get (CLI, cold)", "aria2c -x8 -> file"),
                    harness.Comparison("dffs 8 ranged -> storage", "aria2c -x8 -> file"),
                    harness.Comparison("dffs 8 ranged -> storage", "curl -> file"),
                    harness.Comparison("dffs stream -> storage", "curl -> file"),
                    harness.Comparison("dffs http -> buffer", "curl -> /dev/null"),
                    harness.Comparison("dffs http -> buffer", "h11 only -> buffer"),
                ],
                params={"size_bytes": size, "workdir": str(work), "smoke": args.smoke},
                runs=args.runs,
            )
            for run_number, who in bench.schedule():
                setup, action, check = contenders[who]
                setup()
                warm_page_cache(obj)
                seconds = timed(action)
                check()
                bench.record(run_number, who, {"throughput": size / seconds / 1e9})
            clean()
    finally:
        clean()
        shutil.rmtree(shm, ignore_errors=True)
    bench.report()


if __name__ == "__main__":
    main()
