"""Error types shared by every component.

Errors carry a one-line, human-readable message: the CLI prints ``str(err)`` as
is, so messages name the URL, task or file they are about and never need a
traceback to be understood.
"""


class DffsError(Exception):
    """Base class of every error dffs raises on purpose."""

    #: Process exit code when this error ends a command: 1 for runtime failures.
    exit_code = 1


class UsageError(DffsError):
    """The user asked for something malformed (bad URL, flag, digest...)."""

    exit_code = 2


class SourceError(DffsError):
    """The origin failed: unreachable, an error status, a broken response."""

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


class StorageError(DffsError):
    """The local piece store cannot do what was asked (disk full, corrupt metadata)."""


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
