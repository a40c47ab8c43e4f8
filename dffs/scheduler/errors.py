"""Errors of the scheduler's pure layers, each naming one gRPC status code.

The pure layers raise these; only ``service`` turns them into statuses (through
:mod:`dffs.rpc.status`, like every other servicer), so the protocol logic stays
testable without gRPC.
"""

from __future__ import annotations

from dffs.errors import DffsError


class SchedulerError(DffsError):
    """Base class; ``grpc_code`` (from :class:`DffsError`) names a ``grpc.StatusCode`` member."""

    grpc_code = "INTERNAL"


class InvalidArgument(SchedulerError):
    """The message is malformed: missing ids, absurd piece numbers, wrong ids on a stream."""

    grpc_code = "INVALID_ARGUMENT"


class NotFound(SchedulerError):
    """An unknown host, task or peer."""

    grpc_code = "NOT_FOUND"


class AlreadyExists(SchedulerError):
    """A peer id registered twice."""

    grpc_code = "ALREADY_EXISTS"


class FailedPrecondition(SchedulerError):
    """Valid message, wrong moment: before register, after the peer finished, ..."""

    grpc_code = "FAILED_PRECONDITION"


class PermissionDenied(SchedulerError):
    """The caller's certificate does not allow it: a daemon speaking for another host."""

    grpc_code = "PERMISSION_DENIED"
