"""A supervised child dies with its supervisor, however the supervisor dies.

``dffs up`` names itself in each child's environment (:data:`ENV`). The child,
first thing, asks the kernel for SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``), then checks that its parent is still that process:
a supervisor that died between the fork and the ``prctl`` would otherwise go
unnoticed (the child is already re-parented, and the signal never comes).

``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, not
the process. trio's ``open_process`` forks from a worker thread, which trio
retires when it has been idle a while: that would kill a healthy child. So the
supervisor forks from its main thread (:func:`spawn`), which lives exactly as
long as the process. (A pipe each child watches would not care which thread
forked, but it needs a live event loop in the child to notice; the kernel's
signal reaches a child that is stuck too.)

SIGTERM rather than SIGKILL: a daemon with a mount unmounts on SIGTERM, so the
mount point is clear once the supervisor is gone; a child that cannot finish
leaves a stale mount, which the next daemon on that mount point clears.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
from collections.abc import MutableMapping, Sequence

import trio

from dffs.errors import DffsError

log = logging.getLogger(__name__)

#: The supervisor's pid, in a child's environment.
ENV = "DFFS_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1
#: What a child gets when its supervisor dies.
DEATH_SIGNAL = signal.SIGTERM


def bind_to_supervisor(environ: MutableMapping[str, str] = os.environ) -> int | None:
    """In a child of a supervisor: die (SIGTERM) when it dies; returns its pid, None when unsupervised.

    The variable is taken out of the environment so that this process's own
    children (the FUSE keeper, which must outlive a daemon) are not bound."""
    value = environ.pop(ENV, None)
    if value is None:
        return None
    try:
        expected = int(value)
    except ValueError:
        raise DffsError(f"bad {ENV}={value!r}: expected a process id") from None
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(DEATH_SIGNAL), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        log.warning("event=parent_death_signal_unavailable error=%s", os.strerror(err))
    if os.getppid() != expected:  # the supervisor died before the prctl: the signal will never come
        raise DffsError(f"supervisor (pid {expected}) is gone; not starting")
    return expected


class Child:
    """A child process forked from the main thread, awaited through a pidfd."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.pid = popen.pid
        self._pidfd = os.pidfd_open(popen.pid)
        self._waiting = trio.Lock()
        self.stdout: trio.lowlevel.FdStream | None = None
        if popen.stdout is not None:
            self.stdout = trio.lowlevel.FdStream(os.dup(popen.stdout.fileno()))
            popen.stdout.close()

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    async def wait(self) -> int:
        async with self._waiting:  # trio lets one task at a time wait on a descriptor
            if self.popen.poll() is None:
                await trio.lowlevel.wait_readable(self._pidfd)
        return self.popen.wait()

    def send_signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def aclose(self) -> None:
        """Close our ends (the process must have been waited for)."""
        if self.stdout is not None:
            await self.stdout.aclose()
        os.close(self._pidfd)


def spawn(argv: Sequence[str], *, stderr, stdout=subprocess.PIPE) -> Child:
    """Start a child bound to this process (:func:`bind_to_supervisor` runs in it).

    Must run on the main thread (see the module docstring); a fork and exec
    take milliseconds, so doing it on the trio thread costs the loop nothing
    that matters. The child gets its own session, so a terminal's Ctrl-C
    reaches only the supervisor, which stops the children in order."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("children must be forked from the main thread (PR_SET_PDEATHSIG follows the thread)")
    env = dict(os.environ)
    env[ENV] = str(os.getpid())
    popen = subprocess.Popen(
        list(argv), stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env, start_new_session=True
    )
    return Child(popen)
