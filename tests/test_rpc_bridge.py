"""The trio <-> grpcio bridge, over real gRPC on loopback and a Unix socket.

Servicers (tests/rpc_bridge_server.py) are trio code behind the server
adapters; clients use the client-side bridge.  Every test also checks that no
thread it caused outlives it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import trio
from google.protobuf import empty_pb2

from dffs.api import (
    common_pb2,
    dfdaemon_pb2,
    dfdaemon_pb2_grpc,
    manager_pb2,
    manager_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from dffs.rpc.bridge import (
    _END,
    _Handoff,
    client_target,
    insecure_channel,
    is_unix_address,
    open_bidi_stream,
    open_grpc_server,
    open_stream_unary,
    open_unary_stream,
    server_options,
    trio_unary,
    unary,
)

SERVER_SCRIPT = Path(__file__).with_name("rpc_bridge_server.py")


def _load_helpers():
    # By path, so this works whatever tests/ is (package or not).
    spec = importlib.util.spec_from_file_location("dffs_tests_rpc_bridge_server", SERVER_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _load_helpers()

# Long enough never to fire on a loaded CI machine; tests finish in milliseconds.
STEP = 10


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves threads behind.

    A sync fixture, so this runs after the test's trio run has ended.  gRPC's
    own threads (channel poller, request consumer) end asynchronously right
    after their call does, so join them with a deadline rather than sampling
    thread names once.
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    for thread in _new_threads(before):
        thread.join(max(0.0, deadline - time.monotonic()))
    leaked = [t.name for t in _new_threads(before) if t.is_alive()]
    assert not leaked, f"threads leaked: {leaked}"


def _new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    # trio's own worker-thread cache (used here only by trio's subprocess
    # support) keeps idle threads for a while by design; the bridge never uses it.
    return [t for t in threading.enumerate() if t not in before and not t.name.startswith("Trio thread")]


@pytest.fixture
def recorder():
    return helpers.Recorder()


@pytest.fixture
async def server(recorder):
    async with open_grpc_server("127.0.0.1:0", helpers.register_all(recorder), grace=0.2) as server:
        yield server


@pytest.fixture
async def channel(server):
    with insecure_channel(server.target) as channel:
        yield channel


def _register(peer_id: str = "peer-1") -> scheduler_pb2.AnnouncePeerRequest:
    return scheduler_pb2.AnnouncePeerRequest(
        host_id="host-1",
        task_id="task-1",
        peer_id=peer_id,
        register_peer_request=scheduler_pb2.RegisterPeerRequest(
            download=common_pb2.Download(url="https://example.com/a.bin", priority=common_pb2.PRIORITY_LEVEL0)
        ),
    )


def _piece_finished(number: int) -> scheduler_pb2.AnnouncePeerRequest:
    return scheduler_pb2.AnnouncePeerRequest(
        host_id="host-1",
        task_id="task-1",
        peer_id="peer-1",
        download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(
            piece=common_pb2.Piece(number=number, length=4 << 20, digest="blake3:00")
        ),
    )


def _peer_finished() -> scheduler_pb2.AnnouncePeerRequest:
    return scheduler_pb2.AnnouncePeerRequest(
        host_id="host-1",
        task_id="task-1",
        peer_id="peer-1",
        download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest(content_length=1, piece_count=1),
    )


# ---- pure helpers ----------------------------------------------------------


def test_client_target():
    assert client_target("127.0.0.1:0", 4242) == "127.0.0.1:4242"
    assert client_target("0.0.0.0:8002", 8002) == "localhost:8002"
    assert client_target("[::]:0", 5000) == "localhost:5000"
    assert client_target("unix:/run/dffs.sock", 1) == "unix:/run/dffs.sock"
    assert is_unix_address("unix:///run/x.sock") and not is_unix_address("localhost:1")


def test_server_options_refuse_port_sharing():
    assert ("grpc.so_reuseport", 0) in server_options()


# ---- the thread <-> trio handoff --------------------------------------------


async def test_handoff_thread_to_trio_keeps_order_and_bound():
    handoff = _Handoff(trio.lowlevel.current_trio_token(), 3)
    done_puts = 0

    def produce() -> None:
        nonlocal done_puts
        for i in range(200):
            assert handoff.put_blocking(i)
            done_puts += 1
        handoff.close_write()

    thread = threading.Thread(target=produce)
    thread.start()
    received = []
    while True:
        # The producer can never be more than the bound ahead of us.
        assert done_puts <= len(received) + 3
        try:
            received.append(await handoff.get())
        except trio.EndOfChannel:
            break
    thread.join()
    assert received == list(range(200))


async def test_handoff_trio_to_thread_and_close_read():
    handoff = _Handoff(trio.lowlevel.current_trio_token(), 2)
    got = []

    def consume() -> None:
        for _ in range(5):
            got.append(handoff.get_blocking())
        handoff.close_read()  # the consumer leaves early

    thread = threading.Thread(target=consume)
    thread.start()
    with trio.fail_after(STEP):
        with pytest.raises(trio.BrokenResourceError):
            for i in range(1000):
                await handoff.put(i)
    thread.join()
    assert got == [0, 1, 2, 3, 4]
    assert handoff.get_blocking() is _END
    assert not handoff.put_blocking("late")


async def test_handoff_trio_get_is_cancellable():
    handoff = _Handoff(trio.lowlevel.current_trio_token(), 1)
    with trio.move_on_after(0.01) as scope:
        await handoff.get()
    assert scope.cancelled_caught
    thread = threading.Thread(target=handoff.put_blocking, args=("after",))
    thread.start()
    with trio.fail_after(STEP):
        assert await handoff.get() == "after"
    thread.join()
    handoff.close_write()
    with pytest.raises(trio.EndOfChannel):
        await handoff.get()
    with pytest.raises(trio.ClosedResourceError):
        await handoff.put("x")


# ---- unary -----------------------------------------------------------------


async def test_unary_success(channel):
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    task = await unary(stub.StatTask, scheduler_pb2.StatTaskRequest(task_id="t1"), timeout=STEP)
    assert task.id == "t1"
    assert task.content_length == 10 << 20
    assert task.created_at.seconds == 1_700_000_000


async def test_unary_error_status_propagates(channel):
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        await unary(stub.StatTask, scheduler_pb2.StatTaskRequest(task_id="missing"), timeout=STEP)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert "missing" in info.value.details()


async def test_unary_deadline_exceeded_cancels_handler(channel, recorder):
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        await unary(stub.StatTask, scheduler_pb2.StatTaskRequest(task_id="slow"), timeout=0.05)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    with trio.fail_after(STEP):
        await recorder.stat_task_cancelled.wait()


async def test_trio_cancellation_cancels_rpc(channel, recorder):
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    async with trio.open_nursery() as nursery:

        async def call():
            await unary(stub.StatTask, scheduler_pb2.StatTaskRequest(task_id="slow"), timeout=STEP)
            pytest.fail("the call should have been cancelled")

        nursery.start_soon(call)
        with trio.fail_after(STEP):
            await recorder.stat_task_started.wait()
        nursery.cancel_scope.cancel()
    # The server's trio handler was cancelled because the client went away.
    with trio.fail_after(STEP):
        await recorder.stat_task_cancelled.wait()


async def test_unary_unavailable_server():
    with insecure_channel("127.0.0.1:1") as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            await unary(stub.StatTask, scheduler_pb2.StatTaskRequest(task_id="t"), timeout=STEP)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


# ---- server streaming ------------------------------------------------------


async def test_server_streaming_yields_all_items(channel):
    stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)
    request = dfdaemon_pb2.SyncPiecesRequest(host_id="h", task_id="t", interested_piece_numbers=range(40))
    async with open_unary_stream(stub.SyncPieces, request, timeout=STEP, buffer=4) as pieces:
        numbers = [piece.number async for piece in pieces]
        with pytest.raises(trio.EndOfChannel):
            await pieces.receive()
    assert numbers == list(range(40))


async def test_server_streaming_cancel_mid_stream(channel, recorder):
    stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)
    request = dfdaemon_pb2.SyncPiecesRequest(task_id="endless", interested_piece_numbers=[0, 1])
    async with open_unary_stream(stub.SyncPieces, request, timeout=STEP) as pieces:
        assert (await pieces.receive()).number == 0
        assert (await pieces.receive()).number == 1
        # Nothing more is coming: a trio timeout on a blocked receive ...
        with trio.move_on_after(0.05) as scope:
            await pieces.receive()
        assert scope.cancelled_caught
    # ... and leaving the block cancels the call, which cancels the server's generator.
    with trio.fail_after(STEP):
        await recorder.sync_pieces_cancelled.wait()


async def test_server_streaming_deadline(channel):
    stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)
    request = dfdaemon_pb2.SyncPiecesRequest(task_id="endless", interested_piece_numbers=[7])
    async with open_unary_stream(stub.SyncPieces, request, timeout=0.1) as pieces:
        received = []
        with pytest.raises(grpc.RpcError) as info:
            async for piece in pieces:
                received.append(piece.number)
    assert received == [7]
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


# ---- bidirectional streaming -----------------------------------------------


async def test_bidi_round_trips_and_half_close(channel, recorder):
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    async with open_bidi_stream(stub.AnnouncePeer, timeout=STEP) as stream:
        await stream.send(_register())
        first = await stream.receive()
        assert first.WhichOneof("response") == "need_back_to_source_response"
        assert first.need_back_to_source_response.description == "peer-1:register_peer_request"
        for number in range(3):
            await stream.send(_piece_finished(number))
        for _ in range(3):
            response = await stream.receive()
            assert response.need_back_to_source_response.description.endswith("download_piece_finished_request")
        # Half-close: the server sees the end of its requests and ends the stream OK.
        await stream.done_writing()
        rest = [r async for r in stream]
        assert rest == []
        assert stream.call.code() is grpc.StatusCode.OK
        with pytest.raises(trio.ClosedResourceError):
            await stream.send(_register())
    assert recorder.announce_requests == ["register_peer_request"] + ["download_piece_finished_request"] * 3
    assert not recorder.announce_cancelled.is_set()


async def test_bidi_server_ends_stream(channel):
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    async with open_bidi_stream(stub.AnnouncePeer, timeout=STEP) as stream:
        await stream.send(_register())
        await stream.send(_peer_finished())
        kinds = [r.need_back_to_source_response.description async for r in stream]
        assert kinds == ["peer-1:register_peer_request", "peer-1:download_peer_finished_request"]
        # The call is over: sending again fails fast instead of blocking.
        with pytest.raises(trio.BrokenResourceError):
            with trio.fail_after(STEP):
                for _ in range(100):
                    await stream.send(_register())


async def test_bidi_error_status_propagates(channel):
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    failed = scheduler_pb2.AnnouncePeerRequest(
        peer_id="peer-1",
        download_peer_failed_request=scheduler_pb2.DownloadPeerFailedRequest(description="disk full"),
    )
    async with open_bidi_stream(stub.AnnouncePeer, timeout=STEP) as stream:
        await stream.send(_register())
        await stream.receive()
        await stream.send(failed)
        with pytest.raises(grpc.RpcError) as info:
            await stream.receive()
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "disk full"
        with pytest.raises(grpc.RpcError):
            with trio.fail_after(STEP):
                for _ in range(100):
                    await stream.send(_register())


def _reschedule() -> scheduler_pb2.AnnouncePeerRequest:
    return scheduler_pb2.AnnouncePeerRequest(
        host_id="host-1",
        task_id="task-1",
        peer_id="peer-1",
        reschedule_request=scheduler_pb2.RescheduleRequest(description="parents too slow"),
    )


async def test_bidi_cancel_mid_stream_cancels_busy_handler(channel, recorder):
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    with trio.CancelScope() as outer:
        async with open_bidi_stream(stub.AnnouncePeer, timeout=STEP) as stream:
            await stream.send(_register())
            await stream.receive()
            await stream.send(_reschedule())
            with trio.fail_after(STEP):
                await recorder.announce_waiting.wait()
            # Blocked waiting for an answer that will never come when trio
            # cancels us: the context exits, cancelling the call ...
            outer.cancel()
            await stream.receive()
    assert outer.cancelled_caught
    # ... and the server's handler, busy (not reading requests), is cancelled.
    with trio.fail_after(STEP):
        await recorder.announce_cancelled.wait()


async def test_bidi_cancel_ends_reading_handler(channel, recorder):
    """A handler blocked on its requests ends when the client cancels.

    It may end by cancellation or by seeing the end of its requests: grpcio
    reports a cancelled client to the request iterator as end-of-stream when
    that event happens to be processed first (see dffs.rpc.bridge).
    """
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    async with open_bidi_stream(stub.AnnouncePeer, timeout=STEP) as stream:
        await stream.send(_register())
        await stream.receive()
    with trio.fail_after(STEP):
        await recorder.announce_ended.wait()


async def test_bidi_many_streams_concurrently(channel):
    stub = scheduler_pb2_grpc.SchedulerStub(channel)

    async def one_peer(index: int) -> None:
        async with open_bidi_stream(stub.AnnouncePeer, timeout=STEP) as stream:
            await stream.send(_register(f"peer-{index}"))
            response = await stream.receive()
            assert response.need_back_to_source_response.description == f"peer-{index}:register_peer_request"
            await stream.done_writing()
            assert [r async for r in stream] == []

    async with trio.open_nursery() as nursery:
        for index in range(8):
            nursery.start_soon(one_peer, index)


# ---- client streaming --------------------------------------------------------


async def test_client_streaming_keepalive(channel, recorder):
    stub = manager_pb2_grpc.ManagerStub(channel)
    async with open_stream_unary(stub.KeepAlive, timeout=STEP) as stream:
        for _ in range(5):
            await stream.send(manager_pb2.KeepAliveRequest(hostname="h", cluster_id=1))
        await stream.done_writing()
        assert await stream.response() == empty_pb2.Empty()
    assert recorder.keepalive_count == 5


# ---- server --------------------------------------------------------------------


async def test_unix_socket_server(tmp_path, recorder):
    path = tmp_path / "dffs.sock"
    async with open_grpc_server(f"unix:{path}", helpers.register_all(recorder), grace=0.2) as server:
        assert server.target == f"unix:{path}" and server.port == 0
        assert path.exists()
        with insecure_channel(server.target) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            task = await unary(stub.StatTask, scheduler_pb2.StatTaskRequest(task_id="over-unix"), timeout=STEP)
    assert task.id == "over-unix"


async def test_port_in_use_is_an_error(server, recorder):
    with pytest.raises(RuntimeError):
        async with open_grpc_server(f"127.0.0.1:{server.port}", helpers.register_all(recorder)):
            pass  # pragma: no cover


async def test_server_stop_cancels_open_streams(recorder):
    """Leaving the server context with a stream still open: grace, then cancel."""
    async with open_grpc_server("127.0.0.1:0", helpers.register_all(recorder), grace=0.05) as server:
        with insecure_channel(server.target) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            async with open_bidi_stream(stub.AnnouncePeer, timeout=STEP) as stream:
                await stream.send(_register())
                await stream.receive()
                await stream.send(_reschedule())
                with trio.fail_after(STEP):
                    await recorder.announce_waiting.wait()
                async with trio.open_nursery() as nursery:
                    # Stop the server under the open stream.
                    nursery.start_soon(_stop, server)
                    with pytest.raises(grpc.RpcError) as info:
                        await stream.receive()
                assert info.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    with trio.fail_after(STEP):
        await recorder.announce_cancelled.wait()


async def _stop(server) -> None:
    # Stop from a thread of our own (server.stop blocks until handlers end,
    # and those handlers need this trio loop running).
    done = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def stop() -> None:
        server.server.stop(0.05).wait()
        token.run_sync_soon(done.set)

    thread = threading.Thread(target=stop)
    thread.start()
    await done.wait()
    thread.join()


async def _handler(request, context):
    return None  # pragma: no cover


def test_adapter_outside_trio_needs_a_token():
    with pytest.raises(RuntimeError, match="trio_token"):
        trio_unary(_handler)


async def test_adapter_inside_trio_captures_the_token():
    assert callable(trio_unary(_handler))
    assert callable(trio_unary(_handler, trio_token=trio.lowlevel.current_trio_token()))


# ---- a server in another process ------------------------------------------------


async def test_server_in_another_process():
    process = await trio.lowlevel.open_process(
        [sys.executable, str(SERVER_SCRIPT), "127.0.0.1:0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        with trio.fail_after(STEP):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(256)
                assert chunk, "server exited before it was ready"
                line += chunk
        target = line.decode().strip()
        with insecure_channel(target) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            task = await unary(stub.StatTask, scheduler_pb2.StatTaskRequest(task_id="remote"), timeout=STEP)
            assert task.id == "remote"
            async with open_bidi_stream(stub.AnnouncePeer, timeout=STEP) as stream:
                await stream.send(_register("remote-peer"))
                await stream.send(_peer_finished())
                kinds = [r.need_back_to_source_response.description async for r in stream]
            assert kinds == ["remote-peer:register_peer_request", "peer-1:download_peer_finished_request"]
        await process.stdin.aclose()
        with trio.fail_after(STEP):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        await process.stdout.aclose()
