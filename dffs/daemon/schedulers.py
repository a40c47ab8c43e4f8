"""The schedulers a daemon talks to, which may change while it runs (``--manager``).

One gRPC channel and one host-announcement loop per scheduler address. The
stubs dict is shared with the P2P context: tasks opened after an update use
the new set; a task already talking to a removed scheduler loses its stream
and finishes from the origin (the fetcher's usual fallback).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

import grpc
import trio

from dffs.api import scheduler_pb2_grpc
from dffs.rpc import bridge

log = logging.getLogger(__name__)

AnnounceLoop = Callable[[str, scheduler_pb2_grpc.SchedulerStub], Awaitable[None]]


class SchedulerPool:
    def __init__(self, nursery: trio.Nursery, announce: AnnounceLoop):
        self._nursery = nursery
        self._announce = announce
        #: address -> stub, in the order the manager ranked them.
        self.stubs: dict[str, scheduler_pb2_grpc.SchedulerStub] = {}
        self._channels: dict[str, grpc.Channel] = {}
        self._loops: dict[str, trio.CancelScope] = {}

    @property
    def addresses(self) -> list[str]:
        return list(self.stubs)

    def update(self, addresses: Iterable[str]) -> bool:
        """Talk to exactly ``addresses`` from now on; True when the set changed."""
        wanted = list(dict.fromkeys(addresses))
        if wanted == list(self.stubs):
            return False
        for address in [a for a in self.stubs if a not in wanted]:
            self._loops.pop(address).cancel()
            del self.stubs[address]
            self._channels.pop(address).close()
            log.info("event=scheduler_removed scheduler=%s", address)
        stubs = {}
        for address in wanted:
            stub = self.stubs.get(address)
            if stub is None:
                channel = self._channels[address] = bridge.insecure_channel(address)
                stub = scheduler_pb2_grpc.SchedulerStub(channel)
                self._loops[address] = scope = trio.CancelScope()
                self._nursery.start_soon(self._run_announce, scope, address, stub)
                log.info("event=scheduler_added scheduler=%s", address)
            stubs[address] = stub
        self.stubs.clear()
        self.stubs.update(stubs)
        return True

    async def _run_announce(self, scope: trio.CancelScope, address: str, stub) -> None:
        with scope:
            await self._announce(address, stub)

    def close(self) -> None:
        for scope in self._loops.values():
            scope.cancel()
        for channel in self._channels.values():
            channel.close()
        self._loops.clear()
        self._channels.clear()
        self.stubs.clear()
