"""The gRPC ``dffs.scheduler.Scheduler`` service, on ``grpc.aio``.

Why asyncio and not grpcio's thread pool: every download in the cluster holds
one AnnouncePeer stream for its whole life, and a synchronous grpcio server
pins one worker thread per open stream, so the pool size would silently cap
the number of downloads in the cluster.  ``grpc.aio`` serves each stream as a
coroutine; the graph is touched only from the event loop, so it needs no lock.
The scheduling work itself is synchronous and fast (:mod:`core`).

AnnouncePeer contract (what a daemon sends and gets)
====================================================
0. Before any AnnouncePeer, ``AnnounceHost`` (Host: id, type, hostname, ip --
   an IP address --, port -- the DfdaemonUpload gRPC port --, download_port
   -- the HTTP piece port, required unless disable_shared --, idc, location,
   labels; ``interval``: how often it will announce again).  Repeat every
   interval: a host silent for ``host_ttl_intervals`` intervals (``host_ttl``
   without an interval) is dropped with all its peers.  The answer's
   ``host_known`` is false when this scheduler did not know the host (it
   restarted, or forgot the host): it knows none of the host's finished tasks,
   and the daemon registers them again.  A register on an
   unannounced host ends the stream NOT_FOUND.
1. Open one AnnouncePeer stream per download.  Every message carries the same
   ``host_id``, ``task_id`` and ``peer_id`` (else INVALID_ARGUMENT).  The
   scheduler never recomputes the task id: the daemon's id rule is the truth.
2. First message: ``register_peer_request{download}`` (url required;
   piece_length, tag, application, priority, disable_back_to_source,
   need_back_to_source honoured).  Anything else first: FAILED_PRECONDITION.
   A peer id already registered: ALREADY_EXISTS.
3. The scheduler answers **one** AnnouncePeerResponse per register and per
   ``reschedule_request``, and nothing else, ever; a reschedule sent before the
   previous one was answered is folded into it (its list applies; one answer
   for both).  Messages are applied as they arrive, also while an answer is
   pending: a piece report never waits behind a reschedule.

   * ``normal_task_response{candidate_parents}``: 1..K parents, best first.
     Each Peer has ``id``, ``state``, ``host`` (id, type, ip, port,
     download_port, idc, location) and ``task`` (id, piece_length,
     content_length and piece_count once known).  No piece list: ask the
     parent (SyncPieces on host.ip:host.port; bytes from
     host.ip:host.download_port).  A parent may be a seed still fetching from
     the origin (state ``triggered`` or ``back_to_source``) with no pieces yet:
     wait for its pieces rather than dropping it at once.
   * ``need_back_to_source_response{description}``: fetch from the origin.
   * ``empty_task_response``: the object is empty; finish at once.
   * or the stream ends FAILED_PRECONDITION (the origin may not be used and
     no parent appeared within ``retry_limit`` rounds; priority LEVEL1).

   The answer can take up to ``retry_limit`` x ``retry_interval`` (5 s by
   default) while no parent is usable yet; it comes sooner when a change can
   help this peer (another peer has a piece it lacks and a free upload slot,
   a seed starts, a peer on the origin is gone).  Wait for it before sending
   more.
4. Then report, in order, as things happen:

   * ``download_peer_started_request`` when fetching from parents begins,
     ``download_peer_back_to_source_started_request`` when the origin does
     (optional: the first piece implies it);
   * ``download_piece_finished_request{piece{number, parent_id, offset,
     length, digest, cost, traffic_type=REMOTE_PEER}}`` for each verified
     piece from a parent (parent_id required: the id the scheduler gave);
   * ``download_piece_back_to_source_finished_request{piece{number, offset,
     length, digest, cost}}`` for each piece from the origin;
   * ``download_piece_failed_request{piece_number, parent_id, temporary}``:
     ``temporary=false`` (bad digest, parent gone) blocks that parent for this
     peer; ``true`` only counts against it;
   * ``reschedule_request{candidate_parents=[Peer{id}...]}`` to get a fresh
     list without the listed parents (they stay blocked for this peer);
   * finally ``download_peer_finished_request{content_length, piece_count}``
     (or the back-to-source variant), or ``download_peer_failed_request`` (or
     the back-to-source variant); then half-close.  The scheduler closes its
     side with OK.

   Report pieces promptly: they are what makes the peer a parent for others.
   Piece numbers must be < piece_count once known, and < ``max_piece_count``.
5. A stream that ends before a final message: a peer that never started
   leaves, one mid-download is marked failed.  A succeeded peer stays a parent
   after its stream closes, until DeletePeer, DeleteTask(host_id, task_id),
   DeleteHost, its host's TTL or ``peer_ttl``.
6. Small tasks without a stream each: ``StatTasks`` with ``holders_per_task``
   (at most 8) also answers, per one-piece task with an anchored digest, a few
   finished holders on other live, sharing hosts and that digest; a daemon
   that fetched such tasks from holders registers itself as their finished
   peer, many per ``AnnounceFinishedTasks`` call (at most 1,000): each entry
   is the register, piece reports and finished report a stream would carry
   (pieces with ``parent_id`` never anchor; without it they are origin pieces
   and do). A bad entry is refused alone (``refused``: task id -> reason).
7. A seed daemon asked to fetch a task (``DfdaemonUpload/DownloadTask``, see
   :mod:`trigger`) downloads it like any peer: AnnounceHost as
   HOST_TYPE_SEED, AnnouncePeer register for the task; the scheduler answers
   need-back-to-source and adopts the placeholder its children were told about.

Errors end the stream (or the call) with INVALID_ARGUMENT, NOT_FOUND,
ALREADY_EXISTS or FAILED_PRECONDITION and a one-line detail; oversized
messages with RESOURCE_EXHAUSTED.  The server itself stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator

import grpc
from google.protobuf import empty_pb2, message_factory
from google.protobuf.message import DecodeError

from dffs.api import scheduler_pb2, scheduler_pb2_grpc
from dffs.metrics import scheduler as metrics
from dffs.rpc.status import abort_aio
from dffs.scheduler.config import SchedulerConfig
from dffs.scheduler.core import SchedulerCore, SeedTriggerRequest, Session
from dffs.scheduler.errors import InvalidArgument, PermissionDenied, SchedulerError
from dffs.scheduler.heap import Heap
from dffs.scheduler.trigger import SeedTrigger
from dffs.security.ca import Identity
from dffs.security.transport import Transport

log = logging.getLogger("dffs.scheduler")

SERVICE_NAME = "dffs.scheduler.Scheduler"
#: Answer kinds as metric labels.
_DECISIONS = {
    "normal_task_response": "parents",
    "need_back_to_source_response": "back_to_source",
    "empty_task_response": "empty",
}


class _Conversation:
    """One AnnouncePeer stream's messages, read one at a time, and the read an answer that waits
    for a parent started (so that messages arriving meanwhile are applied at once)."""

    __slots__ = ("requests", "caller", "session", "peer_id", "reading", "ended")

    def __init__(self, requests: AsyncIterator[scheduler_pb2.AnnouncePeerRequest], caller: Identity | None) -> None:
        self.requests = aiter(requests)
        self.caller = caller
        self.session: Session | None = None
        self.peer_id = "-"
        #: A read of the next message started while an answer waited (None: none in flight).
        self.reading: asyncio.Future | None = None
        #: The client half-closed: nothing more to read.
        self.ended = False

    def start_reading(self) -> asyncio.Future:
        if self.reading is None:
            self.reading = asyncio.ensure_future(anext(self.requests, None))
        return self.reading

    def take_read(self) -> scheduler_pb2.AnnouncePeerRequest | None:
        """The message the finished read brought (None: the stream's end); its error, raised."""
        assert self.reading is not None and self.reading.done()
        reading, self.reading = self.reading, None
        request = reading.result()
        self.ended = request is None
        return request

    async def next(self) -> scheduler_pb2.AnnouncePeerRequest | None:
        """The next message, or None at the stream's end."""
        if self.ended:
            return None
        if self.reading is not None:
            await asyncio.wait([self.reading])
            return self.take_read()
        request = await anext(self.requests, None)
        self.ended = request is None
        return request

    def close(self) -> None:
        if self.reading is not None:
            self.reading.cancel()
            self.reading = None


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, SchedulerError):
        await abort_aio(context, exc)
    log.error("event=internal_error error=%r", exc, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def _unary(method):
    """Run a synchronous unary handler for an authorized caller; SchedulerError -> its status code."""

    @functools.wraps(method)
    async def handler(self, request, context):
        try:
            self.authorize(context, _host_named(request))
            return method(self, request)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            await _abort(context, exc)

    return handler


def _host_named(request) -> str | None:
    """The host a request speaks for (None: about no host, e.g. ListHosts)."""
    if isinstance(request, scheduler_pb2.AnnounceHostRequest):
        return request.host.id
    return getattr(request, "host_id", None)


class SchedulerService(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, core: SchedulerCore, transport: Transport, *, seed_trigger: SeedTrigger | None = None):
        self.core = core
        #: Who is calling (mutual TLS): a daemon may speak only for its own host.
        self.transport = transport
        self.config: SchedulerConfig = core.config
        self.seed_trigger = seed_trigger
        self._background: set[asyncio.Task[None]] = set()
        self._gc_task: asyncio.Task[None] | None = None
        self._heap = Heap()

    # ---- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Start the GC loop (call from the event loop)."""
        self._gc_task = asyncio.create_task(self._gc_loop(), name="scheduler-gc")

    async def aclose(self) -> None:
        """Stop the GC loop and pending seed triggers."""
        tasks = [t for t in (self._gc_task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        aclose = getattr(self.seed_trigger, "aclose", None)
        if aclose is not None:
            await aclose()

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.gc_interval)
            try:
                report = self.core.gc()  # wakes the waiters its removals may help
            except Exception:  # a bug in GC must not stop future passes
                log.exception("event=gc_failed")
                continue
            for kind in ("hosts", "peers", "tasks"):
                metrics.gc_removed.labels(kind).inc(len(getattr(report, kind)))
            self._heap.settle()  # the collector's full passes then skip the long-lived graph

    # ---- change notification ----------------------------------------------

    def notify_all(self) -> None:
        """Every waiting peer decides again (the cluster's config or seed list changed)."""
        self.core.wake_all()

    # ---- seed triggers ----------------------------------------------------

    def _start_trigger(self, trigger: SeedTriggerRequest) -> None:
        if self.seed_trigger is None:
            return
        task = asyncio.create_task(self._run_trigger(trigger), name=f"seed-trigger-{trigger.task_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_trigger(self, trigger: SeedTriggerRequest) -> None:
        assert self.seed_trigger is not None
        try:
            await asyncio.wait_for(self.seed_trigger(trigger), self.config.seed_trigger_timeout)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
        except Exception as exc:  # noqa: BLE001 - any failure fails the placeholder
            reason = f"{type(exc).__name__}: {exc}"
        else:
            log.info("event=seed_trigger_accepted task=%s seed_host=%s", trigger.task_id, trigger.host_id)
            return
        self.core.seed_trigger_failed(trigger, reason)  # wakes a waiter of the task

    def authorize(self, context, host_id: str | None) -> None:
        """A daemon's certificate names its host: it may announce, register and delete only for it.
        Managers and clients (``dffs ctl``, holders of the cluster key) may speak for any host."""
        self.permit(self.caller(context), host_id)

    def caller(self, context) -> Identity | None:
        """Who calls (None on an insecure transport); PermissionDenied without a member certificate.

        Parsing the certificate is most of what a message costs, so a stream asks once."""
        if not self.transport.secure:
            return None
        caller = self.transport.peer(context)
        if caller is None:
            raise PermissionDenied("no member certificate")
        return caller

    def permit(self, caller: Identity | None, host_id: str | None) -> None:
        """Whether ``caller`` (from :meth:`caller`) may speak for ``host_id``."""
        if caller is None:
            return
        if caller.role == "daemon" and host_id is not None and host_id != caller.id:
            raise PermissionDenied(f"{caller.uri} may not speak for host {host_id[:64]!r}")
        if caller.role == "scheduler" and host_id is not None:
            raise PermissionDenied(f"{caller.uri} may not speak for hosts")

    # ---- AnnouncePeer -----------------------------------------------------

    async def AnnouncePeer(
        self,
        request_iterator: AsyncIterator[scheduler_pb2.AnnouncePeerRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[scheduler_pb2.AnnouncePeerResponse]:
        """Each message is applied as it arrives. A register or reschedule is decided at once; when
        no answer is possible yet, messages that arrive while the answer waits are applied too, not
        held behind it: what this peer holds reaches the graph, and the peers waiting for it, at once."""
        conversation: _Conversation | None = None
        loop = asyncio.get_running_loop()
        try:
            # one TLS connection: the same certificate for every message
            conversation = _Conversation(request_iterator, self.caller(context))
            while (request := await conversation.next()) is not None:
                if not self._apply(conversation, request):
                    continue
                asked = loop.time()
                response = await self._answer(conversation)
                if response is not None:
                    metrics.schedule_seconds.observe(loop.time() - asked)
                    metrics.decisions.labels(_DECISIONS.get(response.WhichOneof("response"), "other")).inc()
                    yield response
        except SchedulerError as exc:
            peer_id = conversation.peer_id if conversation is not None else "-"
            log.info("event=announce_peer_rejected peer=%s code=%s detail=%r", peer_id, exc.grpc_code, str(exc))
            await _abort(context, exc)
        except Exception as exc:  # noqa: BLE001 - a bug: INTERNAL, the server stays up
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, exc)
        finally:
            if conversation is not None:
                conversation.close()
                if conversation.session is not None:
                    self.core.stream_closed(conversation.session)

    def _apply(self, conversation: _Conversation, request: scheduler_pb2.AnnouncePeerRequest) -> bool:
        """Apply one message of the stream; True when it asks for an answer (a register, a reschedule)."""
        conversation.peer_id = request.peer_id or "-"
        self.permit(conversation.caller, request.host_id)
        if conversation.session is None:
            conversation.session = self.core.register(request)
            return True
        return self.core.handle(conversation.session, request)

    async def _answer(self, conversation: _Conversation) -> scheduler_pb2.AnnouncePeerResponse | None:
        """Scheduling rounds until the policy answers (None: the peer needs no parents any more).

        A round is ``retry_interval``; between decisions the session waits in
        the core's waiting room, and a change that can help it (see
        :mod:`dffs.scheduler.waiting`) re-evaluates at once without counting
        as a round. Otherwise the next decision comes at the round the policy
        named (``Retry.next_round``): deciding again earlier would only repeat
        the answer. Meanwhile the stream's messages are applied as they come;
        a reschedule among them is folded into this answer (its avoid list
        applies), and a finished or failed report ends the wait with no answer.
        """
        session = conversation.session
        assert session is not None
        loop = asyncio.get_running_loop()
        interval = self.config.retry_interval
        start = loop.time()
        rounds = 0
        while True:
            if not self.core.awaits_parents(session):
                return None
            answer = self.core.schedule(session, rounds)
            if answer.trigger is not None:
                self._start_trigger(answer.trigger)
            if answer.response is not None:
                return answer.response
            next_round = getattr(answer.decision, "next_round", None) or rounds + 1
            woken = loop.create_future()
            self.core.wait(session, functools.partial(_resolve, woken))
            try:
                waits = [woken] if conversation.ended else [woken, conversation.start_reading()]
                timeout = start + max(next_round, rounds + 1) * interval - loop.time()
                await asyncio.wait(waits, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
                if conversation.reading is not None and conversation.reading.done():
                    request = conversation.take_read()
                    if request is not None:
                        self._apply(conversation, request)
            finally:
                self.core.unwait(session)
                woken.cancel()
            rounds = max(rounds, math.floor((loop.time() - start) / interval + 1e-9))

    # ---- unary calls ------------------------------------------------------

    @_unary
    def AnnounceHost(self, request):
        known = self.core.knows_host(request.host.id)
        self.core.announce_host(request)  # a new seed host wakes a waiter of each task
        return scheduler_pb2.AnnounceHostResponse(host_known=known)

    @_unary
    def DeleteHost(self, request):
        self.core.delete_host(request)
        return empty_pb2.Empty()

    @_unary
    def StatTask(self, request):
        return self.core.stat_task(request)

    @_unary
    def StatTasks(self, request):
        return self.core.stat_tasks(request)

    @_unary
    def AnnounceFinishedTasks(self, request):
        answer = self.core.announce_finished_tasks(request)
        metrics.finished_tasks.labels("registered").inc(len(request.tasks) - len(answer.refused))
        metrics.finished_tasks.labels("refused").inc(len(answer.refused))
        return answer

    @_unary
    def DeleteTask(self, request):
        self.core.delete_task(request)
        return empty_pb2.Empty()

    @_unary
    def DeletePieces(self, request):
        self.core.delete_pieces(request)
        metrics.pieces_deleted.inc(len(request.piece_numbers))
        return empty_pb2.Empty()

    @_unary
    def GetPieceDigests(self, request):
        return self.core.piece_digests(request)

    @_unary
    def StatPeer(self, request):
        return self.core.stat_peer(request)

    @_unary
    def ListHosts(self, request):
        return self.core.list_hosts()

    @_unary
    def DeletePeer(self, request):
        self.core.delete_peer(request)
        return empty_pb2.Empty()


# ---- registration ------------------------------------------------------------------


def _parse(message_class, raw: bytes):
    try:
        return message_class.FromString(raw)
    except DecodeError as exc:
        raise InvalidArgument(f"malformed {message_class.DESCRIPTOR.name}: {exc}") from None


def add_to_server(service: SchedulerService, server: grpc.aio.Server) -> None:
    """Register ``service``, decoding requests ourselves.

    grpcio decodes requests before the handler runs and answers a corrupt one
    with UNKNOWN and a logged traceback; here it is INVALID_ARGUMENT and one
    log line, like any other bad input.
    """
    handlers = {}
    for method in scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
        behaviour = getattr(service, method.name)
        if method.client_streaming and method.server_streaming:

            async def stream(raw_iterator, context, behaviour=behaviour, request_class=request_class):
                async def requests():
                    async for raw in raw_iterator:
                        yield _parse(request_class, raw)

                async with contextlib.aclosing(behaviour(requests(), context)) as responses:
                    async for response in responses:
                        yield response

            handlers[method.name] = grpc.stream_stream_rpc_method_handler(stream, response_serializer=serialize)
        elif not method.client_streaming and not method.server_streaming:

            async def unary(raw, context, behaviour=behaviour, request_class=request_class):
                try:
                    request = _parse(request_class, raw)
                except InvalidArgument as exc:
                    log.info("event=request_rejected code=INVALID_ARGUMENT detail=%r", str(exc))
                    await _abort(context, exc)
                return await behaviour(request, context)

            handlers[method.name] = grpc.unary_unary_rpc_method_handler(unary, response_serializer=serialize)
        else:  # pragma: no cover - the proto has no such method today
            raise NotImplementedError(f"{SERVICE_NAME}/{method.name}: streaming shape not supported")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
