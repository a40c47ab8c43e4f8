"""Small trio gRPC servicers for tests/test_rpc_bridge.py, and a server script.

As a script (``python tests/rpc_bridge_server.py ADDRESS``) it serves them on
ADDRESS, prints the client target on one line once serving, and exits when
its stdin reaches EOF, so the parent test controls its lifetime and a dead
parent never leaves it behind.
"""

from __future__ import annotations

import os
import sys

import grpc
import trio
from google.protobuf import empty_pb2

from dffs.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc, manager_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from dffs.rpc.bridge import open_grpc_server, trio_stream_stream, trio_stream_unary, trio_unary, trio_unary_stream


class Recorder:
    """What the servicers saw, for tests running in the same trio run."""

    def __init__(self) -> None:
        self.stat_task_started = trio.Event()
        self.stat_task_cancelled = trio.Event()
        self.sync_pieces_cancelled = trio.Event()
        self.announce_started = trio.Event()
        self.announce_waiting = trio.Event()
        self.announce_cancelled = trio.Event()
        self.announce_ended = trio.Event()
        self.announce_requests: list[str] = []
        self.keepalive_count = 0


class TestScheduler(scheduler_pb2_grpc.SchedulerServicer):
    """StatTask and AnnouncePeer written as trio code through the adapters.

    Created inside the trio run, so the adapters capture its token.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.StatTask = trio_unary(self.stat_task)
        self.AnnouncePeer = trio_stream_stream(self.announce_peer)

    async def stat_task(self, request: scheduler_pb2.StatTaskRequest, context: grpc.ServicerContext) -> common_pb2.Task:
        if request.task_id == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, f"task {request.task_id} not found")
        if request.task_id == "slow":
            self.recorder.stat_task_started.set()
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                self.recorder.stat_task_cancelled.set()
                raise
        task = common_pb2.Task(
            id=request.task_id,
            url=f"https://example.com/{request.task_id}",
            piece_length=4 << 20,
            content_length=10 << 20,
            piece_count=3,
            state="Succeeded",
            peer_count=2,
            has_available_peer=True,
        )
        task.created_at.FromSeconds(1_700_000_000)
        return task

    async def announce_peer(self, requests, context: grpc.ServicerContext):
        """Answer every request with a NeedBackToSourceResponse naming it.

        Ends the stream after DownloadPeerFinished; fails it with
        INVALID_ARGUMENT on DownloadPeerFailed; never answers a Reschedule (as
        if no parent could be found), which lets tests cancel a handler that
        is busy rather than reading requests.
        """
        self.recorder.announce_started.set()
        try:
            async for request in requests:
                kind = request.WhichOneof("request")
                self.recorder.announce_requests.append(kind)
                if kind == "download_peer_failed_request":
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.download_peer_failed_request.description)
                if kind == "reschedule_request":
                    self.recorder.announce_waiting.set()
                    await trio.sleep_forever()
                yield scheduler_pb2.AnnouncePeerResponse(
                    need_back_to_source_response=scheduler_pb2.NeedBackToSourceResponse(
                        description=f"{request.peer_id}:{kind}"
                    )
                )
                if kind == "download_peer_finished_request":
                    return
        except trio.Cancelled:
            self.recorder.announce_cancelled.set()
            raise
        finally:
            self.recorder.announce_ended.set()


class TestUpload(dfdaemon_pb2_grpc.DfdaemonUploadServicer):
    """SyncPieces as a trio async generator."""

    __test__ = False

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.SyncPieces = trio_unary_stream(self.sync_pieces)

    async def sync_pieces(self, request: dfdaemon_pb2.SyncPiecesRequest, context: grpc.ServicerContext):
        piece_length = 4 << 20
        try:
            for number in request.interested_piece_numbers:
                yield dfdaemon_pb2.SyncPiecesResponse(
                    number=number,
                    offset=number * piece_length,
                    length=piece_length,
                    digest=f"blake3:{number:064x}",
                )
            if request.task_id == "endless":
                # A parent that has no more pieces yet: keeps the stream open.
                await trio.sleep_forever()
        except trio.Cancelled:
            self.recorder.sync_pieces_cancelled.set()
            raise


class TestManager(manager_pb2_grpc.ManagerServicer):
    """KeepAlive (client streaming) as trio code."""

    __test__ = False

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.KeepAlive = trio_stream_unary(self.keep_alive)

    async def keep_alive(self, requests, context: grpc.ServicerContext) -> empty_pb2.Empty:
        async for _request in requests:
            self.recorder.keepalive_count += 1
        return empty_pb2.Empty()


def register_all(recorder: Recorder):
    """A ``register`` callback for open_grpc_server adding all test servicers."""

    def register(server: grpc.Server) -> None:
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(TestScheduler(recorder), server)
        dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(TestUpload(recorder), server)
        manager_pb2_grpc.add_ManagerServicer_to_server(TestManager(recorder), server)

    return register


async def _serve(address: str) -> None:
    async with open_grpc_server(address, register_all(Recorder()), grace=0.2) as server:
        print(server.target, flush=True)
        while True:  # until the parent closes our stdin
            await trio.lowlevel.wait_readable(sys.stdin.fileno())
            if not os.read(sys.stdin.fileno(), 4096):
                return


if __name__ == "__main__":
    trio.run(_serve, sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:0")
