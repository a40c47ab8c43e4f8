"""Peer tasks: one download per task per host, shared by all readers."""

from dffs.peertask.buffers import BufferPool
from dffs.peertask.manager import DownloadRequest, TaskManager
from dffs.peertask.task import PeerTask

__all__ = ["BufferPool", "DownloadRequest", "PeerTask", "TaskManager"]
