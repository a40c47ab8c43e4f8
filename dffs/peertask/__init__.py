"""Peer tasks: one download per task per host, shared by all readers."""

from dffs.peertask.background import Background
from dffs.peertask.buffers import BufferPool
from dffs.peertask.manager import TaskManager
from dffs.peertask.request import DownloadRequest
from dffs.peertask.swarm import NoSwarm, OriginFetcher, PieceFetcher, Swarm
from dffs.peertask.task import PeerTask

__all__ = [
    "Background",
    "BufferPool",
    "DownloadRequest",
    "NoSwarm",
    "OriginFetcher",
    "PeerTask",
    "PieceFetcher",
    "Swarm",
    "TaskManager",
]
