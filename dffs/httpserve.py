"""What the daemon's two trio HTTP servers (piece upload, proxy) share: serving listeners and
the sendfile body marker for h11."""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio

log = logging.getLogger(__name__)

#: accept() failures that mean "out of resources for now": trio.serve_listeners pauses and retries on exactly these.
ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class FileSpan:
    """Stands for a body h11 frames but never sees (``send_with_data_passthrough``):
    the bytes go from the content file to the socket by sendfile. h11 hints ``Data.data`` as bytes, so passing
    a FileSpan needs a ``# type: ignore[arg-type]``: the hint is narrower than what h11 does."""

    __slots__ = ("length",)

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length


async def serve_listeners(
    handle: Callable[[trio.SocketStream], Awaitable[None]],
    listeners: list[trio.SocketListener],
    *,
    name: str,
    handler_nursery: trio.Nursery | None = None,
) -> NoReturn:
    """Accept on every listener until cancelled, one ``handle(stream)`` task per connection (in
    ``handler_nursery`` when given); the listeners are closed on the way out.

    trio.serve_listeners does the work, including the pause when out of file descriptors or memory;
    each listener is wrapped only so that such a pause is also logged in our format
    (``event={name}_accept_failed``), next to trio's own ERROR line from ``trio.serve_listeners``.
    """
    wrapped = [_LoggedListener(listener, name) for listener in listeners]
    await trio.serve_listeners(handle, wrapped, handler_nursery=handler_nursery)


class _LoggedListener(trio.abc.Listener[trio.SocketStream]):
    """A SocketListener that logs accept()'s resource errors before trio.serve_listeners pauses on them."""

    def __init__(self, listener: trio.SocketListener, name: str):
        self._listener = listener
        self._name = name

    async def accept(self) -> trio.SocketStream:
        try:
            return await self._listener.accept()
        except OSError as exc:
            if exc.errno in ACCEPT_RESOURCE_ERRORS:
                log.warning("event=%s_accept_failed error=%s action=pause", self._name, exc.strerror)
            raise

    async def aclose(self) -> None:
        await self._listener.aclose()
