"""Piece storage: per-task content files, piece journals, and a memory tier."""

from dffs.storage.manager import StorageManager
from dffs.storage.memory import MemoryTier
from dffs.storage.meta import TaskMeta
from dffs.storage.task import TaskStore

__all__ = ["MemoryTier", "StorageManager", "TaskMeta", "TaskStore"]
