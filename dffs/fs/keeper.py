"""The FUSE connection keeper: a FUSE mount that outlives the daemon serving it.

A FUSE mount dies with the last open descriptor of its ``/dev/fuse``
connection, and every overlay stacked on it (a running container's rootfs)
breaks with it. pyfuse3 (libfuse) cannot take over a live connection either:
a new session answers EIO to everything until it sees the kernel's INIT. So
the connection is held by this small process instead, which

* opens ``/dev/fuse`` and mounts it (``mount(2)``, as root),
* relays every request to the daemon connected to its Unix socket
  (SOCK_SEQPACKET: one FUSE message per packet, so libfuse reads the socket as
  if it were the device — the daemon passes it to pyfuse3 as ``/dev/fd/N``)
  and every reply back,
* records the kernel's INIT and replays it to each newly connected daemon
  (its reply swallowed once the kernel has had one), and re-sends the
  requests the previous daemon took but never answered,
* while no daemon is connected, leaves requests queued in the kernel: readers
  wait (their own timeouts apply), they do not fail.

It exits when the mount goes away (the device reports an error). Splice is
masked out of INIT's capabilities: libfuse cannot splice from a socket.

:class:`Relay` is the bookkeeping, pure and unit-tested; :func:`main` the I/O.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import logging
import os
import select
import socket
import struct
import sys
from pathlib import Path

log = logging.getLogger(__name__)

IN_HEADER = struct.Struct("<IIQQIIIHH")  # struct fuse_in_header
OUT_HEADER = struct.Struct("<IiQ")  # struct fuse_out_header
INIT_IN = struct.Struct("<IIII")  # major, minor, max_readahead, flags
FUSE_INIT = 26
NO_REPLY = {2, 36, 42}  # FORGET, INTERRUPT, BATCH_FORGET
SPLICE = (1 << 7) | (1 << 8) | (1 << 9)  # FUSE_SPLICE_WRITE | _MOVE | _READ
BUFFER = 4 << 20


class Relay:
    """Which requests are unanswered, and what a newly connected daemon must be sent first."""

    def __init__(self) -> None:
        self.init: bytes | None = None
        self.init_unique: int | None = None
        self.init_answered = False
        self.pending: dict[int, bytes] = {}
        self._swallow: int | None = None

    def from_kernel(self, message: bytes) -> bytes:
        """A request read from the device; returns what to send to the daemon."""
        if len(message) < IN_HEADER.size:
            return message
        _, opcode, unique, *_ = IN_HEADER.unpack_from(message)
        if opcode == FUSE_INIT and len(message) >= IN_HEADER.size + INIT_IN.size:
            major, minor, readahead, flags = INIT_IN.unpack_from(message, IN_HEADER.size)
            edited = bytearray(message)
            INIT_IN.pack_into(edited, IN_HEADER.size, major, minor, readahead, flags & ~SPLICE)
            message = bytes(edited)
            self.init, self.init_unique = message, unique
            return message
        if opcode not in NO_REPLY:
            self.pending[unique] = message
        return message

    def connected(self) -> list[bytes]:
        """A daemon connected: what it must see before new requests."""
        first = []
        if self.init is not None:
            first.append(self.init)
            self._swallow = self.init_unique if self.init_answered else None
        first.extend(self.pending.values())
        return first

    def from_daemon(self, message: bytes) -> bytes | None:
        """A reply (or notification) from the daemon; returns what to write to the device."""
        if len(message) < OUT_HEADER.size:
            return message
        _, _, unique = OUT_HEADER.unpack_from(message)
        if unique and unique == self._swallow:
            self._swallow = None
            return None  # the replayed INIT's answer: the kernel has had one
        if unique and unique == self.init_unique:
            self.init_answered = True
        self.pending.pop(unique, None)
        return message


def set_buffers(conn: socket.socket) -> None:
    """Room for the largest FUSE message (1 MiB reads and their replies) in one packet.

    A packet larger than the sender's buffer fails with EMSGSIZE; the default
    (net.core.wmem_max) is smaller than that, so as root we force it."""
    for option in (getattr(socket, "SO_SNDBUFFORCE", 32), getattr(socket, "SO_RCVBUFFORCE", 33)):
        try:
            conn.setsockopt(socket.SOL_SOCKET, option, 2 * BUFFER)
        except OSError:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * BUFFER)


def _mount(fd: int, target: str, options: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    flags = 0x1 | 0x2 | 0x4  # MS_RDONLY | MS_NOSUID | MS_NODEV
    data = f"fd={fd},rootmode=40000,user_id=0,group_id=0,{options}".encode()
    if libc.mount(b"dffs-layers", target.encode(), b"fuse.dffs", flags, data) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mount {target}: {os.strerror(code)}")


def serve(mountpoint: str, socket_path: str, options: str) -> int:
    device = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    _mount(device, mountpoint, options)
    Path(socket_path).unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(socket_path)
    os.chmod(socket_path, 0o600)
    listener.listen(4)
    print(f"dffs fuse keeper ready mountpoint={mountpoint}", flush=True)
    relay = Relay()
    conn: socket.socket | None = None
    poller = select.poll()
    poller.register(listener, select.POLLIN)

    def drop() -> None:
        nonlocal conn
        if conn is not None:
            poller.unregister(conn)
            conn.close()
            conn = None
        poller.modify(device, 0)  # requests wait in the kernel; errors (unmount) still wake us

    poller.register(device, 0)
    while True:
        for fd, events in poller.poll():
            if fd == listener.fileno():
                new, _ = listener.accept()
                if conn is not None:
                    drop()
                set_buffers(new)
                try:
                    for message in relay.connected():
                        new.sendall(message)
                except OSError:
                    new.close()
                    continue
                conn = new
                poller.register(conn, select.POLLIN)
                poller.modify(device, select.POLLIN)
            elif fd == device:
                if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    return 0  # unmounted: nothing left to keep
                try:
                    message = os.read(device, BUFFER)
                except OSError as exc:
                    if exc.errno == errno.ENODEV:
                        return 0
                    if exc.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                        continue
                    raise
                forward = relay.from_kernel(message)
                if conn is not None:
                    try:
                        conn.sendall(forward)
                    except OSError:
                        drop()  # kept in pending: the next daemon gets it
            elif conn is not None and fd == conn.fileno():
                try:
                    message = conn.recv(BUFFER)
                except OSError:
                    message = b""
                if not message:
                    drop()
                    continue
                reply = relay.from_daemon(message)
                if reply is not None:
                    try:
                        os.write(device, reply)
                    except OSError as exc:
                        if exc.errno == errno.ENODEV:
                            return 0
                        # ENOENT: the request was interrupted meanwhile; nothing to do


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hold a FUSE mount open across daemon restarts")
    parser.add_argument("mountpoint")
    parser.add_argument("socket")
    parser.add_argument("--options", default="allow_other,default_permissions")
    args = parser.parse_args(argv)
    try:
        return serve(args.mountpoint, args.socket, args.options)
    except OSError as exc:
        print(f"dffs fuse keeper: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
