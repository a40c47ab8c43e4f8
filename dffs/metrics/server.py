"""A tiny HTTP endpoint: ``GET /metrics`` (Prometheus text) and ``GET /healthy``.

Two flavours over the same request handling: :func:`serve_trio` for the
daemon (everything there lives in one trio nursery) and
:func:`start_asyncio` for the scheduler and manager (asyncio processes).
Requests are tiny and answered with ``Connection: close``; anything else is
404/405. Rendering the registry is fast and runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

_MAX_HEAD = 8192


def respond(head: bytes, registry: CollectorRegistry, healthy: Callable[[], bool]) -> bytes:
    """The whole HTTP/1.1 response to one request head (pure, apart from rendering)."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace").split()
    if len(line) != 3 or not line[2].startswith("HTTP/"):
        return _response(400, b"bad request\n")
    method, target = line[0], line[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _response(405, b"method not allowed\n")
    if target == "/metrics":
        body, ctype = generate_latest(registry), CONTENT_TYPE_LATEST
    elif target in ("/healthy", "/health", "/healthz"):
        ok = healthy()
        return _response(200 if ok else 503, b"OK\n" if ok else b"unhealthy\n", head_only=method == "HEAD")
    else:
        return _response(404, b"not found: try /metrics or /healthy\n")
    return _response(200, body, ctype, head_only=method == "HEAD")


def _response(status: int, body: bytes, ctype: str = "text/plain; charset=utf-8", *, head_only: bool = False) -> bytes:
    reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
    head = (
        f"HTTP/1.1 {status} {reasons[status]}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + body


async def serve_trio(
    host: str,
    port: int,
    registry: CollectorRegistry,
    healthy: Callable[[], bool] = lambda: True,
    *,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``nursery.start`` gets the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    listeners = listeners[:1]

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(10):
                head = b""
                while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    head += chunk
                await stream.send_all(respond(head, registry, healthy))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    bound = listeners[0].socket.getsockname()[1]
    log.info("event=metrics_listening address=%s port=%d", host, bound)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)


async def start_asyncio(
    host: str, port: int, registry: CollectorRegistry, healthy: Callable[[], bool] = lambda: True
) -> tuple[asyncio.AbstractServer, int]:
    """Start serving on the running asyncio loop; returns the server (close it) and its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            writer.write(respond(head, registry, healthy))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, limit=_MAX_HEAD)
    bound = server.sockets[0].getsockname()[1]
    log.info("event=metrics_listening address=%s port=%d", host, bound)
    return server, bound
