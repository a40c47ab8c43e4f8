"""The snapshots gRPC service (dffs/snapshotter/service.py) over a real gRPC channel on a Unix socket.

What containerd's proxy plugin relies on: the error codes, the namespace from
the ``containerd-namespace`` header, mounts per kind, labels, List's filters
(streamed), Usage, Cleanup. No lazy layers here (no RemoteLayers): a Prepare
with layer labels gets ordinary mounts, as for any layer that cannot be lazy.
"""

from __future__ import annotations

import grpc
import pytest

from dffs.api import containerd_snapshots_pb2 as pb
from dffs.api import containerd_snapshots_pb2_grpc as pb_grpc
from dffs.rpc import bridge
from dffs.snapshotter.service import SnapshotService, serve
from dffs.snapshotter.store import MetaStore


@pytest.fixture
async def api(tmp_path, nursery):
    store = MetaStore(tmp_path / "meta.db")
    service = SnapshotService(tmp_path / "root", store)
    await service.restore()
    sock = tmp_path / "s.sock"
    await nursery.start(serve, service, sock)
    channel = bridge.insecure_channel(f"unix:{sock}")
    try:
        yield pb_grpc.SnapshotsStub(channel), service
    finally:
        channel.close()
        nursery.cancel_scope.cancel()
        store.close()


def md(ns="default"):
    return [("containerd-namespace", ns)]


async def call(method, request, ns="default"):
    return await bridge.unary(method, request, metadata=md(ns), timeout=10)


async def code_of(method, request, ns="default"):
    with pytest.raises(grpc.RpcError) as info:
        await call(method, request, ns)
    return info.value.code()


async def listing(stub, filters=(), ns="default"):
    names = []
    async with bridge.open_unary_stream(
        stub.List, pb.ListSnapshotsRequest(filters=list(filters)), metadata=md(ns)
    ) as s:
        async for response in s:
            names += [(i.name, pb.Kind.Name(i.kind)) for i in response.info]
    return sorted(names)


async def test_a_layer_chain_and_a_container_on_top(api, tmp_path):
    stub, service = api
    first = await call(stub.Prepare, pb.PrepareSnapshotRequest(key="k1", labels={"a": "1"}))
    assert [(m.type, list(m.options)) for m in first.mounts] == [("bind", ["rw", "rbind"])]
    (tmp_path / "root" / "snapshots" / "1" / "fs" / "f").write_bytes(b"x" * 5000)
    await call(stub.Commit, pb.CommitSnapshotRequest(name="layer1", key="k1"))
    top = await call(stub.Prepare, pb.PrepareSnapshotRequest(key="c1", parent="layer1"))
    (mount,) = top.mounts
    assert mount.type == "overlay" and any(o.startswith("lowerdir=") and o.endswith("/1/fs") for o in mount.options)
    view = await call(stub.View, pb.ViewSnapshotRequest(key="v1", parent="layer1"))
    assert [(m.type, list(m.options)) for m in view.mounts] == [("bind", ["ro", "rbind"])]
    info = (await call(stub.Stat, pb.StatSnapshotRequest(key="c1"))).info
    assert (info.parent, info.kind) == ("layer1", pb.ACTIVE)
    usage = await call(stub.Usage, pb.UsageRequest(key="layer1"))
    assert usage.size >= 5000 and usage.inodes == 1
    assert await listing(stub) == [("c1", "ACTIVE"), ("layer1", "COMMITTED"), ("v1", "VIEW")]
    assert await listing(stub, ["kind==committed", "name==v1"]) == [("layer1", "COMMITTED"), ("v1", "VIEW")]
    assert await listing(stub, ["parent==layer1,kind==active"]) == [("c1", "ACTIVE")]


async def test_containerds_error_codes(api):
    stub, _ = api
    await call(stub.Prepare, pb.PrepareSnapshotRequest(key="k"))
    assert await code_of(stub.Prepare, pb.PrepareSnapshotRequest(key="k")) == grpc.StatusCode.ALREADY_EXISTS
    assert await code_of(stub.Stat, pb.StatSnapshotRequest(key="nope")) == grpc.StatusCode.NOT_FOUND
    assert await code_of(stub.Prepare, pb.PrepareSnapshotRequest(key="x", parent="nope")) == grpc.StatusCode.NOT_FOUND
    await call(stub.Commit, pb.CommitSnapshotRequest(name="c", key="k"))
    assert await code_of(stub.Mounts, pb.MountsRequest(key="c")) == grpc.StatusCode.FAILED_PRECONDITION
    assert await code_of(stub.Commit, pb.CommitSnapshotRequest(name="d", key="c")) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    await call(stub.Prepare, pb.PrepareSnapshotRequest(key="child", parent="c"))
    assert await code_of(stub.Remove, pb.RemoveSnapshotRequest(key="c")) == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as info:
        await listing(stub, ["name=="])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await call(stub.Remove, pb.RemoveSnapshotRequest(key="child"))
    await call(stub.Remove, pb.RemoveSnapshotRequest(key="c"))
    assert await code_of(stub.Remove, pb.RemoveSnapshotRequest(key="c")) == grpc.StatusCode.NOT_FOUND


async def test_namespaces_and_labels(api):
    stub, _ = api
    await call(stub.Prepare, pb.PrepareSnapshotRequest(key="k", labels={"keep": "1"}), ns="ns1")
    assert await code_of(stub.Stat, pb.StatSnapshotRequest(key="k"), ns="ns2") == grpc.StatusCode.NOT_FOUND
    request = pb.UpdateSnapshotRequest(info=pb.Info(name="k", labels={"new": "2"}))
    request.update_mask.paths.append("labels.new")
    info = (await call(stub.Update, request, ns="ns1")).info
    assert dict(info.labels) == {"keep": "1", "new": "2"}
    assert await listing(stub, ['labels."new"==2'], ns="ns1") == [("k", "ACTIVE")]
    assert await listing(stub, ns="ns2") == []


async def test_cleanup_removes_what_no_snapshot_owns(api, tmp_path):
    stub, _ = api
    stray = tmp_path / "root" / "snapshots" / "999"
    (stray / "fs").mkdir(parents=True)
    await call(stub.Cleanup, pb.CleanupRequest())
    assert not stray.exists()


async def test_a_crash_between_row_and_directory_is_repaired_at_start(tmp_path):
    store = MetaStore(tmp_path / "meta.db")
    try:
        service = SnapshotService(tmp_path / "root", store)
        row = service.snaps.create("default", "k", "", "active", {})  # the row, but no directories yet
        await SnapshotService(tmp_path / "root", store).restore()
        assert (tmp_path / "root" / "snapshots" / str(row.id) / "work").is_dir()
    finally:
        store.close()


async def test_a_call_without_a_namespace_header_uses_default(api):
    stub, _ = api
    await bridge.unary(stub.Prepare, pb.PrepareSnapshotRequest(key="plain"), timeout=10)
    assert (await call(stub.Stat, pb.StatSnapshotRequest(key="plain"))).info.name == "plain"
