"""Run grpcio's synchronous API from trio, in both directions.

grpcio's async API is built on asyncio, and the daemon is a trio program, so
the daemon uses grpcio's thread-based API and this module moves values and
cancellation across the thread boundary:

* gRPC's own threads report completion with ``TrioToken.run_sync_soon``; a
  unary call therefore costs no thread of ours at all.
* Streams move messages through ``_Handoff``, a small bounded queue with a
  blocking side for threads and an async side for trio.  A thread that must
  block on gRPC (``next(call)``, ``next(request_iterator)``) or feed it
  (a request or response iterator) uses the blocking side; trio is woken
  only when it is actually waiting.  The bound gives backpressure both ways.
  (``trio.from_thread.run`` per message did the same job at ~100 us per
  message on the test machine, most of a streamed message's cost.)
* Cancellation goes both ways: a cancelled trio caller cancels the gRPC call;
  a gRPC call that ends (client gone, deadline, server stopping) cancels the
  trio code serving it, through ``ServicerContext.add_callback``.

Threads we start are plain ``threading.Thread`` objects that we join, not
``trio.to_thread`` workers: trio keeps its cached worker threads alive for
seconds after use, and "no thread outlives the context that started it" is a
property callers and tests rely on.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import trio

from dffs.rpc.status import abort as abort_with_error
from dffs.rpc.status import status_of

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "BidiStream",
    "ClientStream",
    "GrpcServer",
    "RequestStream",
    "ResponseStream",
    "ServerRequests",
    "TrioServicer",
    "channel_options",
    "client_target",
    "insecure_channel",
    "is_unix_address",
    "open_bidi_stream",
    "open_grpc_server",
    "open_stream_unary",
    "open_unary_stream",
    "server_options",
    "trio_stream_stream",
    "trio_stream_unary",
    "trio_unary",
    "trio_unary_stream",
    "unary",
    "unary_method",
    "unary_stream_method",
]

T = TypeVar("T")

#: Control-plane messages are small, but a Task or Peer listing every piece of
#: a very large file is not (25k pieces for 100 GB at 4 MiB).
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024

#: Messages buffered between a gRPC thread and trio, per direction per stream.
DEFAULT_STREAM_BUFFER = 16

_END = object()  # what a thread gets from a finished or abandoned _Handoff
_CANCELLED = object()  # a trio handler's scope was cancelled because its RPC ended


# ---------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """gRPC channel arguments shared by our clients."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def server_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """gRPC server arguments.

    SO_REUSEPORT is on by default in gRPC on Linux, which lets a second
    daemon silently bind a port that is already serving; we want that bind
    to fail instead.
    """
    return [*channel_options(max_message_bytes), ("grpc.so_reuseport", 0)]


def is_unix_address(address: str) -> bool:
    """True for gRPC Unix-socket addresses (``unix:PATH``, ``unix:///PATH``)."""
    return address.startswith(("unix:", "unix-abstract:"))


def client_target(address: str, bound_port: int) -> str:
    """The target a client should dial to reach a server bound to ``address``.

    ``bound_port`` is what ``add_insecure_port`` returned, which replaces a
    requested port 0.  Wildcard hosts become ``localhost``.
    """
    if is_unix_address(address):
        return address
    host, sep, _port = address.rpartition(":")
    if not sep:
        host = address
    if host in ("", "0.0.0.0", "[::]", "::", "*"):
        host = "localhost"
    return f"{host}:{bound_port}"


def _call_kwargs(
    timeout: float | None,
    metadata: Sequence[tuple[str, str | bytes]] | None,
    wait_for_ready: bool | None,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if timeout is not None:
        if math.isinf(timeout):
            timeout = None
        kwargs["timeout"] = timeout
    if metadata is not None:
        kwargs["metadata"] = tuple(metadata)
    if wait_for_ready is not None:
        kwargs["wait_for_ready"] = wait_for_ready
    return kwargs


# ---------------------------------------------------------------------------
# Thread <-> trio plumbing
# ---------------------------------------------------------------------------


def _call_soon(token: trio.lowlevel.TrioToken, fn: Callable[..., object], *args: object) -> None:
    """Schedule ``fn(*args)`` on the trio thread from any thread; never blocks.

    Quietly does nothing once the trio run is over: whatever the callback
    would have woken no longer exists.
    """
    try:
        token.run_sync_soon(fn, *args)
    except trio.RunFinishedError:
        pass


class _Handoff:
    """A bounded FIFO between the trio thread and plain threads.

    Either side may be the producer.  Threads use ``put_blocking`` /
    ``get_blocking``, which wait on a condition variable; trio uses ``put`` /
    ``get``, which park the task and are woken through ``run_sync_soon`` by
    whichever thread changes the state, so the event loop never blocks
    (beyond a short lock).  ``close_write`` means "no more items" (readers
    drain, then see the end); ``close_read`` means "nobody is listening"
    (writers fail).  Both may be called from any thread, more than once.
    """

    def __init__(self, token: trio.lowlevel.TrioToken, max_items: int) -> None:
        self._token = token
        self._max_items = max(1, max_items)
        self._items: deque[Any] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._write_closed = False
        self._read_closed = False
        self._trio_waiting = False
        self._lot = trio.lowlevel.ParkingLot()

    def _changed_locked(self) -> bool:
        """Wake blocked threads; say whether a parked trio task needs waking."""
        self._cond.notify_all()
        wake, self._trio_waiting = self._trio_waiting, False
        return wake

    def _wake_trio(self) -> None:
        # Runs unpark_all on the trio thread; a task that flagged itself as
        # waiting is parked by then, since the loop only runs callbacks
        # between task steps.
        _call_soon(self._token, self._lot.unpark_all)

    def close_write(self) -> None:
        with self._cond:
            self._write_closed = True
            wake = self._changed_locked()
        if wake:
            self._wake_trio()

    def close_read(self) -> None:
        with self._cond:
            self._read_closed = True
            self._items.clear()
            wake = self._changed_locked()
        if wake:
            self._wake_trio()

    # -- blocking side, for plain threads --

    def put_blocking(self, item: Any) -> bool:
        """Wait for room and append; False (item dropped) once either side closed."""
        with self._cond:
            while len(self._items) >= self._max_items and not (self._read_closed or self._write_closed):
                self._cond.wait()
            if self._read_closed or self._write_closed:
                return False
            self._items.append(item)
            wake = self._changed_locked()
        if wake:
            self._wake_trio()
        return True

    def get_blocking(self) -> Any:
        """Wait for the next item; ``_END`` after the writer closed and all
        items were taken, or at once when the reading side was closed."""
        with self._cond:
            while not self._items and not (self._read_closed or self._write_closed):
                self._cond.wait()
            if self._read_closed or not self._items:
                return _END
            item = self._items.popleft()
            wake = self._changed_locked()
        if wake:
            self._wake_trio()
        return item

    # -- async side, for the trio thread --

    async def put(self, item: Any) -> None:
        """Append, waiting for room.  Raises ``trio.ClosedResourceError`` after
        our own ``close_write``, ``trio.BrokenResourceError`` once nobody reads."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            with self._cond:
                if self._write_closed:
                    raise trio.ClosedResourceError
                if self._read_closed:
                    raise trio.BrokenResourceError
                if len(self._items) < self._max_items:
                    self._items.append(item)
                    wake = self._changed_locked()
                    break
                self._trio_waiting = True
            await self._lot.park()
        if wake:  # another trio task waits on the other end; we are on its thread
            self._lot.unpark_all()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def get(self) -> Any:
        """Take the next item.  Raises ``trio.EndOfChannel`` once the writer
        closed and all items were taken, ``trio.ClosedResourceError`` after
        our own ``close_read``."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            with self._cond:
                if self._read_closed:
                    raise trio.ClosedResourceError
                if self._items:
                    item = self._items.popleft()
                    wake = self._changed_locked()
                    break
                if self._write_closed:
                    raise trio.EndOfChannel
                self._trio_waiting = True
            await self._lot.park()
        if wake:
            self._lot.unpark_all()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return item


def _blocking_iterator(handoff: _Handoff) -> Iterator[Any]:
    """Iterate a handoff from a thread, for gRPC to pull requests from.

    It ends (rather than raising) when the handoff is closed: an exception
    would make gRPC log "Exception iterating requests!".
    """
    while True:
        item = handoff.get_blocking()
        if item is _END:
            return
        yield item


class _Thread:
    """A dedicated thread whose end trio can await without blocking its loop."""

    def __init__(self, token: trio.lowlevel.TrioToken, name: str, target: Callable[[], object]) -> None:
        self._token = token
        self._target = target
        self._finished = trio.Event()
        self._error: BaseException | None = None
        self._result: object = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        try:
            self._result = self._target()
        except BaseException as exc:  # handed to whoever joins
            self._error = exc
        finally:
            _call_soon(self._token, self._finished.set)

    async def join(self) -> object:
        """Wait for the thread to end and return its result or raise its error.

        Shielded: joining is cleanup, and every thread we start is built to end
        promptly once its gRPC call is cancelled or its channels are closed.
        """
        with trio.CancelScope(shield=True):
            await self._finished.wait()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


async def _run_in_thread(name: str, fn: Callable[[], T]) -> T:
    """Run a blocking function in a thread of its own and wait for it (shielded)."""
    thread = _Thread(trio.lowlevel.current_trio_token(), name, fn)
    thread.start()
    return await thread.join()  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------


def insecure_channel(
    target: str,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A plaintext channel with our message limits.  Close it (``with``) when done."""
    return grpc.insecure_channel(target, options=[*channel_options(max_message_bytes), *options])


async def _wait_for_future(future: grpc.Future) -> Any:
    """Await a gRPC future without a thread: its done-callback wakes trio.

    If the waiting task is cancelled, the RPC is cancelled too.
    """
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    # Runs on a gRPC thread, or right here if the call has already finished.
    future.add_done_callback(lambda _f: _call_soon(token, done.set))
    try:
        await done.wait()
    except BaseException:
        future.cancel()
        raise
    return future.result()  # the response, or raises the grpc.RpcError


async def unary(
    method: grpc.UnaryUnaryMultiCallable,
    request: Any,
    *,
    timeout: float | None = None,
    metadata: Sequence[tuple[str, str | bytes]] | None = None,
    wait_for_ready: bool | None = None,
) -> Any:
    """Make a unary-unary call and return its response.

    Raises the ``grpc.RpcError`` of a failed call (``.code()``, ``.details()``).
    Cancelling the calling trio task cancels the RPC, so the server sees the
    client go away.
    """
    future = method.future(request, **_call_kwargs(timeout, metadata, wait_for_ready))
    return await _wait_for_future(future)


class ResponseStream:
    """Responses of a server-streaming (or bidirectional) call, as trio sees them.

    ``await receive()`` returns the next response, raises ``trio.EndOfChannel``
    when the server ended the stream with status OK, and raises the call's
    ``grpc.RpcError`` when it ended otherwise.  ``async for`` stops at the
    normal end and raises the ``RpcError`` likewise.  ``call`` is the
    underlying ``grpc.Call`` (metadata, code once finished).
    """

    def __init__(self, call: Any, responses: _Handoff) -> None:
        self.call = call
        self._responses = responses
        self._error: BaseException | None = None  # set by the reader thread before it closes

    async def receive(self) -> Any:
        try:
            return await self._responses.get()
        except trio.EndOfChannel:
            if self._error is not None:
                raise self._error from None
            raise

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


def _read_responses(call: Iterator[Any], responses: _Handoff, stream: ResponseStream) -> None:
    """Reader-thread body: move responses from a gRPC call into trio."""
    try:
        for response in call:
            if not responses.put_blocking(response):
                return  # trio stopped listening; the context is tearing down
    except Exception as exc:  # the call's RpcError, or a response that failed to parse
        stream._error = exc
    finally:
        responses.close_write()


class RequestStream:
    """The sending half of a client-streaming or bidirectional call.

    ``await send(msg)`` queues a request (waiting while the buffer is full);
    ``await done_writing()`` half-closes once queued requests have gone out.
    Sending after ``done_writing`` raises ``trio.ClosedResourceError``;
    sending after the call ended raises the call's ``grpc.RpcError``, or
    ``trio.BrokenResourceError`` when it ended with status OK.
    """

    def __init__(self, call: Any, requests: _Handoff) -> None:
        self.call = call
        self._requests = requests

    async def send(self, message: Any) -> None:
        try:
            await self._requests.put(message)
        except trio.BrokenResourceError:
            # Closed by the call's done-callback (or by leaving the context,
            # which cancels the call): the call is over and code() won't block.
            if self.call.code() is not grpc.StatusCode.OK and isinstance(self.call, grpc.RpcError):
                raise self.call from None
            raise

    async def done_writing(self) -> None:
        self._requests.close_write()
        await trio.lowlevel.checkpoint()


class BidiStream(RequestStream, ResponseStream):
    """Both halves of a bidirectional call; see the two base classes."""

    def __init__(self, call: Any, requests: _Handoff, responses: _Handoff) -> None:
        RequestStream.__init__(self, call, requests)
        ResponseStream.__init__(self, call, responses)


class ClientStream(RequestStream):
    """A client-streaming call: ``send`` requests, ``done_writing``, then
    ``await response()``."""

    async def response(self) -> Any:
        """Wait for the single response; raises the call's ``grpc.RpcError``."""
        return await _wait_for_future(self.call)


@contextlib.asynccontextmanager
async def open_unary_stream(
    method: grpc.UnaryStreamMultiCallable,
    request: Any,
    *,
    timeout: float | None = None,
    metadata: Sequence[tuple[str, str | bytes]] | None = None,
    wait_for_ready: bool | None = None,
    buffer: int = DEFAULT_STREAM_BUFFER,
) -> AsyncIterator[ResponseStream]:
    """Make a server-streaming call; yield a ``ResponseStream`` of its responses.

    Leaving the block cancels the call (if still running) and joins the one
    reader thread this costs.
    """
    token = trio.lowlevel.current_trio_token()
    responses = _Handoff(token, buffer)
    call = method(request, **_call_kwargs(timeout, metadata, wait_for_ready))
    stream = ResponseStream(call, responses)
    reader = _Thread(token, "dffs-rpc-reader", lambda: _read_responses(call, responses, stream))
    try:
        reader.start()
        yield stream
    finally:
        call.cancel()  # wakes the reader if it waits on gRPC
        responses.close_read()  # ... or if it waits for room
        await reader.join()


@contextlib.asynccontextmanager
async def open_bidi_stream(
    method: grpc.StreamStreamMultiCallable,
    *,
    timeout: float | None = None,
    metadata: Sequence[tuple[str, str | bytes]] | None = None,
    wait_for_ready: bool | None = None,
    buffer: int = DEFAULT_STREAM_BUFFER,
) -> AsyncIterator[BidiStream]:
    """Make a bidirectional-streaming call; yield a ``BidiStream``.

    Leaving the block cancels the call: to end politely, ``done_writing()``
    and read responses until the end first.  On exit the reader thread is
    joined and gRPC's request-consuming thread is released.
    """
    token = trio.lowlevel.current_trio_token()
    requests = _Handoff(token, buffer)
    responses = _Handoff(token, buffer)
    call = method(_blocking_iterator(requests), **_call_kwargs(timeout, metadata, wait_for_ready))
    stream = BidiStream(call, requests, responses)
    # Once the call is over nobody will pull requests: make send() fail fast
    # instead of filling the buffer and then waiting forever.
    call.add_done_callback(lambda _call: requests.close_read())
    reader = _Thread(token, "dffs-rpc-reader", lambda: _read_responses(call, responses, stream))
    try:
        reader.start()
        yield stream
    finally:
        call.cancel()
        requests.close_read()  # releases gRPC's thread if it waits for a request
        responses.close_read()  # releases the reader if it waits for room
        await reader.join()


@contextlib.asynccontextmanager
async def open_stream_unary(
    method: grpc.StreamUnaryMultiCallable,
    *,
    timeout: float | None = None,
    metadata: Sequence[tuple[str, str | bytes]] | None = None,
    wait_for_ready: bool | None = None,
    buffer: int = DEFAULT_STREAM_BUFFER,
) -> AsyncIterator[ClientStream]:
    """Make a client-streaming call (e.g. the manager's KeepAlive).

    Yields a ``ClientStream``.  Leaving the block cancels the call if it has
    not finished.
    """
    token = trio.lowlevel.current_trio_token()
    requests = _Handoff(token, buffer)
    future = method.future(_blocking_iterator(requests), **_call_kwargs(timeout, metadata, wait_for_ready))
    future.add_done_callback(lambda _future: requests.close_read())
    try:
        yield ClientStream(future, requests)
    finally:
        future.cancel()
        requests.close_read()


# ---------------------------------------------------------------------------
# Server side
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GrpcServer:
    """A running server, as yielded by ``open_grpc_server``."""

    server: grpc.Server
    #: The address that was bound, as given.
    address: str
    #: The TCP port actually bound (useful with port 0); 0 for Unix sockets.
    port: int
    #: What a client should dial, e.g. ``"127.0.0.1:40123"`` or ``"unix:/run/x.sock"``.
    target: str
    trio_token: trio.lowlevel.TrioToken


# Request-pumping threads of live server RPCs, so that a stopping server can
# wait for those whose RPC is over (they end on their own right after it).
_pump_threads_lock = threading.Lock()
_pump_threads: dict[threading.Thread, grpc.ServicerContext] = {}


def _join_finished_pumps(timeout: float) -> None:
    """Join request threads whose RPC has ended (each ends right after it)."""
    with _pump_threads_lock:
        pumps = [t for t, ctx in _pump_threads.items() if not ctx.is_active()]
    deadline = time.monotonic() + timeout
    for thread in pumps:
        thread.join(max(0.0, deadline - time.monotonic()))


def _stop_server(server: grpc.Server, executor: ThreadPoolExecutor, grace: float) -> None:
    server.stop(grace).wait()
    executor.shutdown(wait=True)
    _join_finished_pumps(timeout=grace + 1.0)


@contextlib.asynccontextmanager
async def open_grpc_server(
    address: str,
    register: Callable[[grpc.Server], object],
    *,
    max_workers: int = 32,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    maximum_concurrent_rpcs: int | None = None,
    grace: float = 1.0,
    options: Sequence[tuple[str, Any]] = (),
    add_port: Callable[[grpc.Server, str], int] | None = None,
) -> AsyncIterator[GrpcServer]:
    """Serve gRPC on ``address`` for the duration of the block.

    ``register(server)`` adds servicers (``add_XServicer_to_server``); it runs
    on the trio thread, so adapters created there (``trio_unary`` & co.)
    capture this run's trio token.  ``address`` is ``"HOST:PORT"`` (port 0
    picks a free one, see ``GrpcServer.port``) or ``"unix:/path"``.  Binding a
    port already in use raises ``RuntimeError``.

    Each RPC occupies one of ``max_workers`` threads while it runs, a stream
    for its whole life (a request-streaming RPC also has a thread of its own
    reading requests).  Once all workers are taken, further RPCs queue
    silently; ``maximum_concurrent_rpcs`` turns that into an immediate
    RESOURCE_EXHAUSTED instead.

    On exit the server stops accepting, gives running RPCs ``grace`` seconds,
    cancels the rest (which cancels their trio handlers), and joins the
    worker and request threads.
    """
    token = trio.lowlevel.current_trio_token()
    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dffs-rpc-server")
    server = grpc.server(
        executor,
        options=[*server_options(max_message_bytes), *options],
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )
    try:
        register(server)
        port = add_port(server, address) if add_port is not None else server.add_insecure_port(address)
        server.start()
    except BaseException:
        await _run_in_thread("dffs-rpc-server-stop", lambda: _stop_server(server, executor, 0))
        raise
    try:
        yield GrpcServer(
            server=server,
            address=address,
            port=0 if is_unix_address(address) else port,
            target=client_target(address, port),
            trio_token=token,
        )
    finally:
        await _run_in_thread("dffs-rpc-server-stop", lambda: _stop_server(server, executor, grace))


def _resolve_token(trio_token: trio.lowlevel.TrioToken | None) -> trio.lowlevel.TrioToken:
    if trio_token is not None:
        return trio_token
    try:
        return trio.lowlevel.current_trio_token()
    except RuntimeError:
        raise RuntimeError(
            "create trio gRPC handlers inside the trio run that serves them "
            "(e.g. in open_grpc_server's register callback), or pass trio_token="
        ) from None


def _name_like(handler: Callable[..., Any], fn: Callable[..., Any]) -> None:
    handler.__name__ = getattr(fn, "__name__", handler.__name__)
    handler.__qualname__ = getattr(fn, "__qualname__", handler.__qualname__)
    handler.__doc__ = getattr(fn, "__doc__", None)


def _cancel_when_rpc_ends(
    token: trio.lowlevel.TrioToken, context: grpc.ServicerContext, scope: trio.CancelScope
) -> None:
    """Cancel ``scope`` when the RPC terminates (client cancel, deadline, stop).

    gRPC runs termination callbacks on its serving thread, also after a normal
    finish; by then the scope has exited and cancelling it does nothing.
    """
    if not context.add_callback(lambda: _call_soon(token, scope.cancel)):
        scope.cancel()  # already over


def _abort_ended(context: grpc.ServicerContext) -> None:
    """End an RPC whose trio side stopped without an answer (raises).

    Either the RPC already ended (then nobody sees the status) or the trio
    run is shutting down under it.
    """
    if context.is_active():
        context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
    context.abort(grpc.StatusCode.CANCELLED, "RPC ended")


async def _serve_in_scope(
    token: trio.lowlevel.TrioToken,
    context: grpc.ServicerContext,
    async_fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    on_exit: Callable[[], object] | None,
) -> Any:
    try:
        with trio.CancelScope() as scope:
            _cancel_when_rpc_ends(token, context, scope)
            return await async_fn(*args)
        return _CANCELLED
    finally:
        if on_exit is not None:
            on_exit()


def _call_in_trio(
    token: trio.lowlevel.TrioToken,
    context: grpc.ServicerContext,
    async_fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    on_exit: Callable[[], object] | None = None,
) -> Any:
    """Worker-thread side of a unary-response handler."""
    try:
        result = trio.from_thread.run(_serve_in_scope, token, context, async_fn, args, on_exit, trio_token=token)
    except (trio.Cancelled, trio.RunFinishedError):
        # BaseExceptions must not reach gRPC: it only catches Exception, and
        # the RPC would hang without a status until the client's deadline.
        if on_exit is not None:
            on_exit()
        result = _CANCELLED
    except Exception as exc:
        if status_of(exc) is None:
            raise
        abort_with_error(context, exc)  # an error that knows its status (dffs.errors)
    if result is _CANCELLED:
        _abort_ended(context)
    return result


class _ProducerOutcome:
    completed = False
    error: BaseException | None = None


async def _produce(
    token: trio.lowlevel.TrioToken,
    context: grpc.ServicerContext,
    outcome: _ProducerOutcome,
    responses: _Handoff,
    async_gen_fn: Callable[..., Any],
    args: tuple[Any, ...],
    on_exit: Callable[[], object] | None,
) -> None:
    """System task driving one streaming handler; must never raise (but Cancelled)."""
    try:
        with trio.CancelScope() as scope:
            _cancel_when_rpc_ends(token, context, scope)
            try:
                async with contextlib.aclosing(async_gen_fn(*args)) as agen:
                    async for item in agen:
                        try:
                            await responses.put(item)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return  # gRPC stopped pulling: the RPC is over
                outcome.completed = True
            except Exception as exc:
                outcome.error = exc
    finally:
        responses.close_write()  # after outcome is final: the worker reads it next
        if on_exit is not None:
            on_exit()


async def _start_producer(
    token: trio.lowlevel.TrioToken,
    context: grpc.ServicerContext,
    outcome: _ProducerOutcome,
    responses: _Handoff,
    async_gen_fn: Callable[..., Any],
    args: tuple[Any, ...],
    on_exit: Callable[[], object] | None,
) -> None:
    # A system task, not a nursery child: it belongs to the RPC, which gRPC
    # owns, and it is cancelled when the RPC ends or the trio run does.
    trio.lowlevel.spawn_system_task(
        _produce,
        token,
        context,
        outcome,
        responses,
        async_gen_fn,
        args,
        on_exit,
        name=getattr(async_gen_fn, "__qualname__", "grpc-stream"),
    )


def _iterate_in_trio(
    token: trio.lowlevel.TrioToken,
    context: grpc.ServicerContext,
    async_gen_fn: Callable[..., Any],
    args: tuple[Any, ...],
    buffer: int,
    on_exit: Callable[[], object] | None = None,
) -> Iterator[Any]:
    """Worker-thread side of a streaming-response handler: a blocking generator
    fed by a trio task that runs the async generator."""
    outcome = _ProducerOutcome()
    responses = _Handoff(token, buffer)
    try:
        trio.from_thread.run(
            _start_producer, token, context, outcome, responses, async_gen_fn, args, on_exit, trio_token=token
        )
    except (trio.Cancelled, trio.RunFinishedError):
        if on_exit is not None:
            on_exit()
        _abort_ended(context)
    try:
        while True:
            item = responses.get_blocking()
            if item is _END:
                break
            yield item
    finally:
        # Reached early when gRPC drops this generator (client gone): the
        # producer's next put fails and it stops.
        responses.close_read()
    if outcome.error is not None:
        if status_of(outcome.error) is not None:
            abort_with_error(context, outcome.error)
        raise outcome.error
    if not outcome.completed:
        _abort_ended(context)


def _pump_requests(request_iterator: Iterator[Any], requests: _Handoff) -> None:
    """Request-thread body: move a server RPC's requests into trio.

    Ends when the client half-closes (the handler then sees the end of its
    requests), when the handler stops reading, or when the RPC ends abnormally.
    In that last case the handoff is left open on purpose: the handler must
    be cancelled (which the RPC's termination callback does), not be told
    that the client finished cleanly.
    """
    try:
        for request in request_iterator:
            if not requests.put_blocking(request):
                return
    except Exception:
        return  # the RPC was cancelled or aborted
    else:
        requests.close_write()
    finally:
        with _pump_threads_lock:
            _pump_threads.pop(threading.current_thread(), None)


class ServerRequests:
    """The requests of a client- or bidi-streaming RPC, for a trio handler.

    An async iterator; ``receive()`` raises ``trio.EndOfChannel`` once the
    client has half-closed.  When the RPC ends abnormally the handler is
    cancelled.  Caveat: grpcio may report a client that cancels as a
    half-close first (its request iterator sees the empty final read before
    the cancellation event), so a handler *waiting for requests* can see the
    end of its requests instead of being cancelled; one busy elsewhere is
    cancelled.
    """

    def __init__(self, requests: _Handoff) -> None:
        self._requests = requests

    async def receive(self) -> Any:
        return await self._requests.get()

    def __aiter__(self) -> ServerRequests:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._requests.get()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


def _start_request_pump(
    token: trio.lowlevel.TrioToken, context: grpc.ServicerContext, request_iterator: Iterator[Any], buffer: int
) -> tuple[ServerRequests, Callable[[], None]]:
    requests = _Handoff(token, buffer)
    thread = threading.Thread(
        target=_pump_requests, args=(request_iterator, requests), name="dffs-rpc-requests", daemon=True
    )
    with _pump_threads_lock:
        _pump_threads[thread] = context
    thread.start()
    # Closing the reading end when the handler is done releases the pump if
    # it waits for room.
    return ServerRequests(requests), requests.close_read


def trio_unary(
    async_fn: Callable[[Any, grpc.ServicerContext], Awaitable[Any]],
    *,
    trio_token: trio.lowlevel.TrioToken | None = None,
) -> Callable[[Any, grpc.ServicerContext], Any]:
    """Turn ``async def fn(request, context) -> response`` into a gRPC handler.

    The handler runs ``fn`` in the trio run of ``trio_token`` (default: the
    run that calls ``trio_unary``), blocking a server worker thread meanwhile.
    When the RPC ends early (client cancel, deadline, server stop) ``fn`` is
    cancelled.  ``context.abort(...)``, ``set_code``, ``invocation_metadata()``
    etc. may be called from ``fn``; they are thread-safe and do not block.
    """
    token = _resolve_token(trio_token)

    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        return _call_in_trio(token, context, async_fn, (request, context))

    _name_like(handler, async_fn)
    return handler


def trio_unary_stream(
    async_gen_fn: Callable[[Any, grpc.ServicerContext], AsyncIterator[Any]],
    *,
    trio_token: trio.lowlevel.TrioToken | None = None,
    buffer: int = DEFAULT_STREAM_BUFFER,
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    """Turn ``async def gen(request, context)`` yielding responses into a
    server-streaming gRPC handler; see ``trio_unary`` for token and cancellation.

    The generator runs in one trio task for its whole life (so cancel scopes
    and nurseries may span its ``yield``s); at most ``buffer`` responses wait
    for the network.
    """
    token = _resolve_token(trio_token)

    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        return _iterate_in_trio(token, context, async_gen_fn, (request, context), buffer)

    _name_like(handler, async_gen_fn)
    return handler


def trio_stream_unary(
    async_fn: Callable[[ServerRequests, grpc.ServicerContext], Awaitable[Any]],
    *,
    trio_token: trio.lowlevel.TrioToken | None = None,
    buffer: int = DEFAULT_STREAM_BUFFER,
) -> Callable[[Iterator[Any], grpc.ServicerContext], Any]:
    """Turn ``async def fn(requests, context) -> response`` into a
    client-streaming handler.  ``requests`` is an async iterator, fed by one
    thread per RPC that blocks on gRPC's request iterator."""
    token = _resolve_token(trio_token)

    def handler(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        requests, close = _start_request_pump(token, context, request_iterator, buffer)
        return _call_in_trio(token, context, async_fn, (requests, context), on_exit=close)

    _name_like(handler, async_fn)
    return handler


def trio_stream_stream(
    async_gen_fn: Callable[[ServerRequests, grpc.ServicerContext], AsyncIterator[Any]],
    *,
    trio_token: trio.lowlevel.TrioToken | None = None,
    buffer: int = DEFAULT_STREAM_BUFFER,
) -> Callable[[Iterator[Any], grpc.ServicerContext], Iterator[Any]]:
    """Turn ``async def gen(requests, context)`` yielding responses into a
    bidirectional handler (the scheduler's AnnouncePeer).  Costs a worker
    thread and a request thread per open stream."""
    token = _resolve_token(trio_token)

    def handler(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        requests, close = _start_request_pump(token, context, request_iterator, buffer)
        return _iterate_in_trio(token, context, async_gen_fn, (requests, context), buffer, on_exit=close)

    _name_like(handler, async_gen_fn)
    return handler


# ---------------------------------------------------------------------------
# Servicer classes
# ---------------------------------------------------------------------------


class TrioServicer:
    """Base for servicer classes whose RPC methods are trio coroutines.

    Subclass the generated ``XServicer`` and this, decorate each RPC method with
    :func:`unary_method` or :func:`unary_stream_method`, and build the object
    inside the trio run that serves it (its token is captured here). A method
    that raises an error with a ``grpc_code`` (every :class:`dffs.errors.DffsError`)
    ends its RPC with that status and the error's message.
    """

    def __init__(self) -> None:
        self._trio_token = _resolve_token(None)


def unary_method(
    async_fn: Callable[[Any, Any, grpc.ServicerContext], Awaitable[Any]],
) -> Callable[[Any, Any, grpc.ServicerContext], Any]:
    """``async def Method(self, request, context) -> response`` as a unary RPC of a :class:`TrioServicer`."""

    def handler(self: TrioServicer, request: Any, context: grpc.ServicerContext) -> Any:
        return _call_in_trio(self._trio_token, context, async_fn, (self, request, context))

    _name_like(handler, async_fn)
    return handler


def unary_stream_method(
    async_gen_fn: Callable[[Any, Any, grpc.ServicerContext], AsyncIterator[Any]],
) -> Callable[[Any, Any, grpc.ServicerContext], Iterator[Any]]:
    """``async def Method(self, request, context)`` yielding responses, as a server-streaming RPC."""

    def handler(self: TrioServicer, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        return _iterate_in_trio(
            self._trio_token, context, async_gen_fn, (self, request, context), DEFAULT_STREAM_BUFFER
        )

    _name_like(handler, async_gen_fn)
    return handler
