"""The servers' accept loop (dffs.httpserve.serve_listeners) when the process runs out of file descriptors.

A real server in a subprocess whose RLIMIT_NOFILE leaves room for exactly two connections: the third waits in
the listen backlog while accept() fails with EMFILE, which is logged and paused on, and is served as soon as a
descriptor is free again — the server never stops.
"""

from __future__ import annotations

import socket
import subprocess
import sys

_SERVER = r"""
import errno, logging, os, resource, sys
import trio
from dffs.httpserve import serve_listeners

logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")

async def handle(stream):
    await stream.send_all(b"hello\n")
    while await stream.receive_some(1024):  # hold the descriptor until the client closes
        pass

async def main():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 3, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    fillers = []
    while True:  # take every free descriptor below the limit, then give back exactly two
        try:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
            break
    os.close(fillers.pop())
    os.close(fillers.pop())
    print(port, flush=True)
    await serve_listeners(handle, listeners, name="probe")

trio.run(main)
"""


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port))


def _greeting(conn: socket.socket) -> bytes:
    return conn.makefile("rb").readline()


def test_out_of_descriptors_is_logged_paused_on_and_survived():
    proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    conns: list[socket.socket] = []
    try:
        port = int(proc.stdout.readline())
        for _ in range(2):
            conns.append(_connect(port))
            assert _greeting(conns[-1]) == b"hello\n"
        waiting = _connect(port)  # the kernel completes the handshake; accept() has no descriptor for it
        conns.append(waiting)
        ours = False
        for line in proc.stderr:  # ours comes first, then trio.serve_listeners' own as it pauses
            ours = ours or "event=probe_accept_failed error=Too many open files action=pause" in line
            if line.startswith("trio.serve_listeners accept returned EMFILE"):
                break
        else:
            raise AssertionError(f"the server never paused on EMFILE; it exited with {proc.wait()}")
        assert ours, "trio paused on EMFILE but our accept_failed line was not logged before"
        conns.pop(0).close()  # frees a descriptor in the server
        assert _greeting(waiting) == b"hello\n"
        assert proc.poll() is None
    finally:
        for conn in conns:
            conn.close()
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
