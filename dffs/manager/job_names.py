"""Job scopes and states: the names the database, the JSON API and ``dffs ctl`` use, and their proto enums.

One table for the manager's gRPC service and the ``dffs ctl --manager`` client, so the two cannot drift apart.
Pure (only the generated protos): the CLI imports it without the manager's database layer.
"""

from __future__ import annotations

from dffs.api import manager_pb2 as pb

SCOPE_TO_PB = {
    "seed": pb.JOB_SCOPE_SINGLE_SEED_PEER,
    "all-seeds": pb.JOB_SCOPE_ALL_SEED_PEERS,
    "all": pb.JOB_SCOPE_ALL_PEERS,
}
SCOPE_FROM_PB = {v: k for k, v in SCOPE_TO_PB.items()}
STATE_TO_PB = {
    "pending": pb.JOB_STATE_PENDING,
    "running": pb.JOB_STATE_RUNNING,
    "succeeded": pb.JOB_STATE_SUCCEEDED,
    "failed": pb.JOB_STATE_FAILED,
}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}
