"""Talking to dffs processes as a member of the test cluster (the session's DFFS_CLUSTER_KEY, see conftest).

Managers, schedulers and daemons started by the tests require mutual TLS, as in production;
tests that call them directly, or stand in for one of them (a fake seed), do it through here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import grpc

from dffs.security.ca import Identity, load_cluster_key
from dffs.security.transport import Transport, secure

_TOKEN_LINE = re.compile(r"HTTP API token \(shown once, keep it\): (\S+)")


def member(role: str = "daemon", ident: str = "tests") -> Transport:
    """A transport with a fresh certificate for ``role``/``ident`` from the test cluster's key."""
    return secure(load_cluster_key(Path(os.environ["DFFS_CLUSTER_KEY"])), Identity(role, ident))


def member_channel(target: str, *, role: str = "daemon", ident: str = "tests") -> grpc.Channel:
    return member(role, ident).channel(target)


def api_token(line: str) -> str | None:
    """The manager's API token from its first-start line, if ``line`` is that line."""
    match = _TOKEN_LINE.search(line)
    return match.group(1) if match else None


def signed_piece_header(task_id: str, number: int, *, host_id: str = "tests") -> str:
    """An ``Authorization`` header value for ``GET /pieces/TASK/N``, signed as a member would
    (for a plain HTTP client such as curl reading a daemon's upload port)."""
    import time

    from dffs.security.pieceauth import PieceAuth
    from dffs.upload.protocol import piece_path

    key = load_cluster_key(Path(os.environ["DFFS_CLUSTER_KEY"]))
    return PieceAuth(key.piece_auth_key()).sign("GET", piece_path(task_id, number), host_id, time.time())
