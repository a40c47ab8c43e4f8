"""Errors of the scheduler's pure layers, each mapped to one gRPC status code.

The pure layers raise these; only ``service`` turns them into statuses, so the
protocol logic stays testable without gRPC.
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Base class; ``code`` names a ``grpc.StatusCode`` member."""

    code = "INTERNAL"


class InvalidArgument(SchedulerError):
    """The message is malformed: missing ids, absurd piece numbers, wrong ids on a stream."""

    code = "INVALID_ARGUMENT"


class NotFound(SchedulerError):
    """An unknown host, task or peer."""

    code = "NOT_FOUND"


class AlreadyExists(SchedulerError):
    """A peer id registered twice."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(SchedulerError):
    """Valid message, wrong moment: before register, after the peer finished, ..."""

    code = "FAILED_PRECONDITION"


class PermissionDenied(SchedulerError):
    """The caller's certificate does not allow it: a daemon speaking for another host."""

    code = "PERMISSION_DENIED"
