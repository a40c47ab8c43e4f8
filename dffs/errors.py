"""Error types shared by every component.

Errors carry a one-line, human-readable message: the CLI prints ``str(err)`` as
is, so messages name the URL, task or file they are about and never need a
traceback to be understood.

Each error also knows how it is reported (as h11's ``error_status_hint`` does):
``exit_code`` when it ends a command, ``grpc_code`` (a ``grpc.StatusCode``
member's name, kept as a string so this module needs no grpc) when a servicer
answers with it — :mod:`dffs.rpc.status` is the one place that turns it into a
status, for every servicer.
"""


class DffsError(Exception):
    """Base class of every error dffs raises on purpose."""

    #: Process exit code when this error ends a command: 1 for runtime failures.
    exit_code = 1
    #: The gRPC status a servicer answers with.
    grpc_code = "INTERNAL"


class UsageError(DffsError):
    """The user asked for something malformed (bad URL, flag, digest...)."""

    exit_code = 2
    grpc_code = "INVALID_ARGUMENT"


class NotFound(DffsError):
    """What was named is not here (a task this host does not hold)."""

    grpc_code = "NOT_FOUND"


class NotReady(DffsError):
    """A valid request at the wrong moment: the task is being read, or not complete here yet."""

    grpc_code = "FAILED_PRECONDITION"


class SourceError(DffsError):
    """The origin failed: unreachable, an error status, a broken response."""

    grpc_code = "UNAVAILABLE"
    #: Whether trying again later may succeed (timeouts, resets, 5xx).
    retryable = False

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        #: The origin's HTTP status when it answered with an error (404, 403...).
        self.status = status


class RetryableSourceError(SourceError):
    retryable = True


class RangeNotSupported(SourceError):
    """The origin ignored a Range request; callers fall back to one stream."""


class SourceChanged(SourceError):
    """The object changed at the origin while it was being downloaded."""


class DigestMismatch(DffsError):
    """Bytes did not match the digest they were promised to have."""

    grpc_code = "DATA_LOSS"


class StorageError(DffsError):
    """The local piece store cannot do what was asked (disk full, corrupt metadata)."""

    grpc_code = "FAILED_PRECONDITION"


def primary_error(group: BaseExceptionGroup) -> BaseException:
    """The exception to surface from a nursery's group: the first that is not a
    cancellation (concurrent workers usually fail for one shared reason), or
    the group itself when it only holds cancellations, which trio must see."""
    import trio

    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if not isinstance(leaf, trio.Cancelled):
            return leaf
    return group
