"""The committed modules in dffs/api match protos/, and the messages work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import duration_pb2

from dffs.api import (
    common_pb2,
    dfdaemon_pb2,
    dfdaemon_pb2_grpc,
    manager_pb2,
    manager_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
API_DIR = ROOT / "dffs" / "api"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
HINT = "generated code in dffs/api is stale: run python scripts/gen_protos.py"


def _generated(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name.endswith(GENERATED_SUFFIXES)}


def test_generated_code_is_up_to_date(tmp_path):
    # From an unrelated cwd, to prove the script resolves its own paths.
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path / "out")],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    fresh = _generated(tmp_path / "out" / "dffs" / "api")
    committed = _generated(API_DIR)
    assert fresh, "gen_protos.py produced nothing"
    missing = sorted(fresh.keys() - committed.keys())
    extra = sorted(committed.keys() - fresh.keys())
    assert not missing, f"{HINT} (missing: {missing})"
    assert not extra, f"{HINT} (no longer generated: {extra})"
    differing = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not differing, f"{HINT} (differs: {differing})"


def _round_trip(message):
    data = message.SerializeToString()
    parsed = type(message).FromString(data)
    assert parsed == message
    return parsed


def test_scheduler_announce_peer_request_round_trip():
    request = scheduler_pb2.AnnouncePeerRequest(
        host_id="host-1",
        task_id="task-1",
        peer_id="peer-1",
        register_peer_request=scheduler_pb2.RegisterPeerRequest(
            download=common_pb2.Download(
                url="https://example.com/model.bin?Signature=x",
                digest="sha256:" + "0" * 64,
                range=common_pb2.Range(start=0, length=1 << 20),
                tag="t",
                application="a",
                priority=common_pb2.PRIORITY_LEVEL3,
                filtered_query_params=["Signature"],
                request_header={"Authorization": "Bearer x"},
                piece_length=4 << 20,
                timeout=duration_pb2.Duration(seconds=30),
            )
        ),
    )
    parsed = _round_trip(request)
    assert parsed.WhichOneof("request") == "register_peer_request"
    download = parsed.register_peer_request.download
    assert download.HasField("piece_length") and download.piece_length == 4 << 20
    assert not download.HasField("output_path")
    assert download.request_header["Authorization"] == "Bearer x"

    response = scheduler_pb2.AnnouncePeerResponse(
        normal_task_response=scheduler_pb2.NormalTaskResponse(
            candidate_parents=[
                common_pb2.Peer(
                    id="parent-1",
                    host=common_pb2.Host(
                        id="h2", ip="10.0.0.2", port=4000, download_port=4001, type=common_pb2.HOST_TYPE_SEED
                    ),
                    pieces=[
                        common_pb2.Piece(number=3, digest="blake3:ab", traffic_type=common_pb2.TRAFFIC_TYPE_REMOTE_PEER)
                    ],
                )
            ]
        )
    )
    assert _round_trip(response).normal_task_response.candidate_parents[0].host.download_port == 4001


def test_dfdaemon_messages_round_trip():
    response = dfdaemon_pb2.DownloadTaskResponse(
        host_id="h",
        task_id="t",
        peer_id="p",
        download_task_started_response=dfdaemon_pb2.DownloadTaskStartedResponse(
            content_length=123, response_header={"ETag": '"x"'}, is_finished=False
        ),
    )
    assert _round_trip(response).WhichOneof("response") == "download_task_started_response"
    piece = dfdaemon_pb2.SyncPiecesResponse(number=7, offset=7 << 22, length=1 << 22, digest="blake3:ff")
    assert _round_trip(piece).offset == 7 << 22
    export = dfdaemon_pb2.ExportTaskRequest(task_id="t", output_path="/tmp/out")
    assert _round_trip(export).WhichOneof("target") == "task_id"


def test_manager_messages_round_trip():
    job = manager_pb2.CreateJobRequest(
        type=manager_pb2.JOB_TYPE_PREHEAT,
        scope=manager_pb2.JOB_SCOPE_ALL_SEED_PEERS,
        preheat=manager_pb2.PreheatArgs(
            type=manager_pb2.PREHEAT_TYPE_IMAGE,
            urls=["oci://registry.example.com/library/alpine:3.20"],
            platform="linux/amd64",
        ),
    )
    assert _round_trip(job).preheat.urls[0].startswith("oci://")
    schedulers = manager_pb2.ListSchedulersResponse(
        schedulers=[manager_pb2.Scheduler(id=1, hostname="s1", ip="10.0.0.1", port=8002, state="active", cluster_id=1)]
    )
    assert _round_trip(schedulers).schedulers[0].port == 8002


def test_common_task_timestamps_and_optional_length():
    task = common_pb2.Task(id="t", url="https://example.com/x", piece_length=4 << 20, state="Running")
    assert not task.HasField("content_length")  # unknown until the origin answers
    task.created_at.FromSeconds(1_700_000_000)
    task.content_length = 0
    parsed = _round_trip(task)
    assert parsed.HasField("content_length") and parsed.content_length == 0
    assert parsed.created_at.ToSeconds() == 1_700_000_000


@pytest.mark.parametrize(
    ("module", "service", "methods"),
    [
        (
            scheduler_pb2,
            "Scheduler",
            {
                "AnnouncePeer": (True, True),
                "StatPeer": (False, False),
                "DeletePeer": (False, False),
                "StatTask": (False, False),
                "StatTasks": (False, False),
                "AnnounceFinishedTasks": (False, False),
                "DeleteTask": (False, False),
                "DeletePieces": (False, False),
                "AnnounceHost": (False, False),
                "DeleteHost": (False, False),
                "ListHosts": (False, False),
                "GetPieceDigests": (False, False),
            },
        ),
        (
            dfdaemon_pb2,
            "DfdaemonUpload",
            {
                "SyncPieces": (False, True),
                "DownloadPiece": (False, False),
                "StatTask": (False, False),
                "DownloadTask": (False, True),
            },
        ),
        (
            dfdaemon_pb2,
            "DfdaemonDownload",
            {
                "DownloadTask": (False, True),
                "StatTask": (False, False),
                "DeleteTask": (False, False),
                "ListTasks": (False, False),
                "ImportTask": (False, False),
                "ExportTask": (False, False),
                "Health": (False, False),
                "RunGC": (False, False),
            },
        ),
        (
            manager_pb2,
            "Manager",
            {
                "ListSchedulers": (False, False),
                "GetScheduler": (False, False),
                "UpdateScheduler": (False, False),
                "ListSeedPeers": (False, False),
                "UpdateSeedPeer": (False, False),
                "DeleteSeedPeer": (False, False),
                "KeepAlive": (True, False),
                "GetClusterConfig": (False, False),
                "CreateJob": (False, False),
                "GetJob": (False, False),
                "ListJobs": (False, False),
            },
        ),
    ],
)
def test_service_shapes(module, service, methods):
    descriptor = module.DESCRIPTOR.services_by_name[service]
    actual = {m.name: (m.client_streaming, m.server_streaming) for m in descriptor.methods}
    assert actual == methods


def test_grpc_modules_expose_stubs_and_servicers():
    for grpc_module, service in [
        (scheduler_pb2_grpc, "Scheduler"),
        (dfdaemon_pb2_grpc, "DfdaemonUpload"),
        (dfdaemon_pb2_grpc, "DfdaemonDownload"),
        (manager_pb2_grpc, "Manager"),
    ]:
        assert hasattr(grpc_module, f"{service}Stub")
        assert hasattr(grpc_module, f"{service}Servicer")
        assert hasattr(grpc_module, f"add_{service}Servicer_to_server")
