"""What the daemon's two trio HTTP servers (piece upload, proxy) share: the accept loop and
the sendfile body marker for h11."""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger(__name__)

#: accept() failures that mean "out of resources for now": pause and retry rather than stop serving.
ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class FileSpan:
    """Stands for a body h11 frames but never sees (``send_with_data_passthrough``):
    the bytes go from the content file to the socket by sendfile. h11 hints ``Data.data`` as bytes, so passing
    a FileSpan needs a ``# type: ignore[arg-type]``: the hint is narrower than what h11 does."""

    __slots__ = ("length",)

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length


async def accept_loop(
    listener: trio.SocketListener,
    nursery: trio.Nursery,
    handle: Callable[[trio.SocketStream], Awaitable[None]],
    *,
    name: str,
    on_accept: Callable[[], None] | None = None,
) -> None:
    """Accept forever, one ``handle(stream)`` task per connection in ``nursery``; when out of
    file descriptors or memory, log (``event={name}_accept_failed``) and pause briefly."""
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in ACCEPT_RESOURCE_ERRORS:
                raise
            log.warning("event=%s_accept_failed error=%s action=pause", name, exc.strerror)
            await trio.sleep(0.1)
            continue
        if on_accept is not None:
            on_accept()
        nursery.start_soon(handle, stream)
