"""Errors to gRPC statuses: the one mapping every servicer uses.

An error names its status (``grpc_code``, see :mod:`dffs.errors` and
:mod:`dffs.scheduler.errors`); this module only looks it up. Errors that name
none are bugs: they are not turned into statuses here (gRPC answers UNKNOWN and
the servicer's framework logs the traceback).
"""

from __future__ import annotations

from typing import NoReturn

import grpc


def status_of(exc: BaseException) -> grpc.StatusCode | None:
    """The status ``exc`` asks to be reported with, or None for an unexpected error."""
    name = getattr(type(exc), "grpc_code", None)
    if not isinstance(name, str):
        return None
    return getattr(grpc.StatusCode, name, grpc.StatusCode.INTERNAL)


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """End the RPC with ``exc``'s status and message (raises, as ``context.abort`` does)."""
    code = status_of(exc)
    context.abort(code if code is not None else grpc.StatusCode.INTERNAL, str(exc))
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


async def abort_aio(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """:func:`abort` for grpc.aio servicers (the scheduler, the manager)."""
    code = status_of(exc)
    await context.abort(code if code is not None else grpc.StatusCode.INTERNAL, str(exc))
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover
