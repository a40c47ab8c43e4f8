"""Run ``dffs up``'s children: start them in order, stop them in reverse on Ctrl-C/SIGTERM.

Children run in their own session, so a terminal's Ctrl-C reaches only the
supervisor, which then stops them in reverse order (the mount first, so it
unmounts while the rest is still up). If any child exits on its own, the rest
are stopped and ``dffs up`` fails, naming it and its log.

However ``dffs up`` itself dies (``kill -9`` too), its children follow: each is
forked from the main thread and asks for SIGTERM when its parent dies
(:mod:`dffs.lifeline`), so the daemon unmounts and nothing is left running.
The data dir is held with an ``flock`` (``DATA_DIR/up.lock``, taken by the
command before this runs), which the kernel releases with a dead holder, so
the next ``dffs up`` on it starts cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import trio

from dffs.errors import DffsError, UsageError
from dffs.lifeline import Child as ChildProcess
from dffs.lifeline import spawn
from dffs.security.ca import create_cluster_key, load_cluster_key
from dffs.security.setup import KEY_FILE_NAME, default_key
from dffs.up.plan import CONFIGS, IP, Child, children

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


class Running:
    def __init__(self, child: Child, process: ChildProcess, stdout: trio.abc.ReceiveStream, log_path: Path):
        self.child = child
        self.process = process
        #: The child's stdout pipe: its ready line, then drained so the child never blocks on it.
        self.stdout = stdout
        self.log_path = log_path
        self.port: int | None = None


async def _start(child: Child, manager: str | None, logs: Path, debug: bool) -> Running:
    log_path = logs / f"{child.name}.log"
    argv = [sys.executable, "-m", "dffs", *(["--debug"] if debug else []), *child.argv(manager)]
    with open(log_path, "ab") as stderr:
        process = spawn(argv, stderr=stderr)
    if process.stdout is None:  # cannot happen with stdout=PIPE; the check tells the type checker so
        raise AssertionError("child started without a stdout pipe")
    running = Running(child, process, process.stdout, log_path)
    buffer = b""
    with trio.move_on_after(START_TIMEOUT):
        async for chunk in running.stdout:
            buffer += chunk
            match = child.ready.search(buffer.decode(errors="replace"))
            if match:
                running.port = int(match["port"])
                return running
    process.kill()
    await process.wait()
    await process.aclose()
    raise DffsError(f"dffs up: {child.name} did not start (see {log_path})")


async def _drain(running: Running) -> None:
    """Keep reading a child's stdout so it never blocks on a full pipe."""
    async for _ in running.stdout:
        pass


async def _stop(running: Running) -> None:
    process = running.process
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            await process.wait()
        if process.returncode is None:
            log.warning("event=child_killed child=%s", running.child.name)
            process.kill()
            await process.wait()
    await process.aclose()


async def _wait_mounted(mountpoint: Path, running: Running) -> None:
    with trio.move_on_after(START_TIMEOUT):
        while running.process.returncode is None:
            if os.path.ismount(mountpoint):
                return
            await trio.sleep(0.05)
    raise DffsError(f"dffs up: the mount at {mountpoint} did not come up (see {running.log_path})")


def cluster_flags(data_dir: Path, cluster_key: Path | None, insecure: bool) -> tuple[str, ...]:
    """The trust flags for every child: the given key, else the default one (dffs.security.setup),
    else a key made in DATA_DIR (everything is on loopback: one host, one cluster), unless ``--insecure``."""
    if insecure:
        if cluster_key is not None:
            raise UsageError("--insecure and --cluster-key exclude each other")
        return ("--insecure",)
    path = cluster_key or default_key() or data_dir / KEY_FILE_NAME
    if not path.exists():
        create_cluster_key(path, name="dffs up one-host cluster")
        log.info("event=cluster_key_created path=%s", path)
    load_cluster_key(path)  # a one-line error now rather than four children failing
    return ("--cluster-key", str(path.absolute()))


async def up(
    data_dir: Path,
    mountpoint: Path,
    *,
    cluster_key: Path | None = None,
    insecure: bool = False,
    debug: bool = False,
) -> int:
    config_dir, logs = data_dir / "up", data_dir / "logs"
    for directory in (data_dir, config_dir, logs, mountpoint):
        directory.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    cluster = cluster_flags(data_dir, cluster_key, insecure)
    for name, text in CONFIGS.items():
        if not (config_dir / name).exists():  # the user's edits win
            (config_dir / name).write_text(text)
    started: list[Running] = []
    manager: str | None = None
    failure: str | None = None
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def watch_signals() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(watch_signals)
                for child in children(data_dir, mountpoint, cluster=cluster, debug=debug):
                    running = await _start(child, manager, logs, debug)
                    started.append(running)
                    nursery.start_soon(_drain, running)
                    if child.name == "manager":
                        manager = f"{IP}:{running.port}"
                await _wait_mounted(mountpoint, started[-1])
                print(
                    f"dffs up: manager {manager}, mount {mountpoint}, data {data_dir}, logs {logs}\n"
                    f"dffs up: ready; read https://HOST/PATH at {mountpoint}/https/HOST/PATH; Ctrl-C stops",
                    flush=True,
                )

                async def watch(running: Running) -> None:
                    nonlocal failure
                    await running.process.wait()
                    failure = (
                        f"dffs up: {running.child.name} exited with {running.process.returncode} "
                        f"(see {running.log_path})"
                    )
                    nursery.cancel_scope.cancel()

                for running in started:
                    nursery.start_soon(watch, running)
    finally:
        with trio.CancelScope(shield=True):
            for running in reversed(started):
                await _stop(running)
    if failure:
        raise DffsError(failure)
    print("dffs up: stopped", flush=True)
    return 0
