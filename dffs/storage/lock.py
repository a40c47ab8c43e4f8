"""One process per data dir: an ``flock`` on a file in it.

The kernel drops an ``flock`` when the last descriptor of its open file goes,
which includes its holder dying by ``kill -9``, so a crash never leaves a lock
behind to block the next start (a pid file would, or would need guessing
whether its pid is still the same process). The holder's pid is written into
the file only to name it in the error.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dffs.errors import DffsError

log = logging.getLogger(__name__)


class DataDirInUse(DffsError):
    """Another live process holds the data dir."""


@contextmanager
def hold_data_dir(data_dir: Path, name: str, *, wait: float = 0.0, poll: float = 0.1) -> Iterator[Path]:
    """Hold ``DATA_DIR/NAME.lock`` for the block; wait up to ``wait`` seconds for a holder that is
    stopping (a crashed supervisor's child gets SIGTERM and needs a moment to unmount).

    The descriptor is close-on-exec: a process this one starts (the FUSE keeper) must not keep
    the lock after it is gone."""
    path = Path(data_dir) / f"{name}.lock"
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DffsError(f"cannot lock data dir {data_dir}: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    raise DataDirInUse(
                        f"data dir {data_dir} is in use by another dffs {name} (pid {holder}, lock {path})"
                    ) from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        log.debug("event=data_dir_locked path=%s", path)
        yield path
    finally:
        os.close(fd)  # releases the lock
