"""A client that tries what an outsider or a member would, from wherever it is started (a namespace host).

``python trust_probe.py CALL CREDENTIALS ARGS...`` prints one JSON object: ``{"ok": true, ...}`` or
``{"ok": false, "code": "UNAVAILABLE", "details": "..."}``. CREDENTIALS is ``plain`` (no TLS),
``foreign:KEYFILE`` (a certificate from another cluster's key) or ``member:ROLE`` (from the test
cluster's key, $DFFS_CLUSTER_KEY).

Calls: ``announce SCHEDULER`` (AnnounceHost), ``sync DAEMON_RPC TASK_ID`` (SyncPieces),
``download DAEMON_RPC URL`` (DfdaemonUpload.DownloadTask), ``stat SCHEDULER TASK_ID`` (StatTask),
``piece HOST:PORT TASK_ID`` (GET /pieces/TASK_ID/0; ``member`` signs it, ``foreign`` signs with the
wrong key).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
from google.protobuf import json_format

from dffs.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from dffs.security.ca import Identity, load_cluster_key
from dffs.security.pieceauth import PieceAuth
from dffs.security.transport import insecure, secure
from dffs.upload.protocol import piece_path


def transport(credentials: str):
    if credentials == "plain":
        return insecure(), None
    kind, _, arg = credentials.partition(":")
    if kind == "foreign":
        key = load_cluster_key(Path(arg))
        return secure(key, Identity("scheduler", "intruder")), key
    key = load_cluster_key(Path(os.environ["DFFS_CLUSTER_KEY"]))
    return secure(key, Identity(arg or "daemon", "probe")), key


def main() -> None:
    call, credentials, *args = sys.argv[1:]
    t, key = transport(credentials)
    try:
        if call == "piece":
            address, task_id = args
            path = piece_path(task_id, 0)
            request = urllib.request.Request(f"http://{address}{path}")
            if key is not None:
                request.add_header(
                    "Authorization", PieceAuth(key.piece_auth_key()).sign("GET", path, "probe", time.time())
                )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    print(json.dumps({"ok": True, "status": response.status, "bytes": len(response.read())}))
            except urllib.error.HTTPError as exc:
                print(json.dumps({"ok": False, "status": exc.code, "details": exc.read().decode(errors="replace")}))
            return
        channel = t.channel(args[0])
        if call == "announce":
            host = common_pb2.Host(id="intruder-host", hostname="intruder", ip="10.0.0.250", port=1, download_port=1)
            scheduler_pb2_grpc.SchedulerStub(channel).AnnounceHost(
                scheduler_pb2.AnnounceHostRequest(host=host), timeout=5
            )
            print(json.dumps({"ok": True}))
        elif call == "sync":
            responses = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel).SyncPieces(
                dfdaemon_pb2.SyncPiecesRequest(host_id="intruder-host", task_id=args[1]), timeout=5
            )
            print(json.dumps({"ok": True, "pieces": len(list(responses))}))
        elif call == "download":
            responses = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel).DownloadTask(
                dfdaemon_pb2.DownloadTaskRequest(download=common_pb2.Download(url=args[1])), timeout=20
            )
            print(json.dumps({"ok": True, "responses": len(list(responses))}))
        elif call == "stat":
            task = scheduler_pb2_grpc.SchedulerStub(channel).StatTask(
                scheduler_pb2.StatTaskRequest(host_id="probe", task_id=args[1]), timeout=5
            )
            print(json.dumps({"ok": True, "task": json_format.MessageToDict(task)}))
        else:
            raise SystemExit(f"unknown call {call}")
    except grpc.RpcError as exc:
        print(json.dumps({"ok": False, "code": exc.code().name, "details": exc.details()}))


if __name__ == "__main__":
    main()
