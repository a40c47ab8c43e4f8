"""Prometheus metrics of every dffs process, and the tiny HTTP endpoint that serves them.

Each process kind has its own registry (``DAEMON``, ``SCHEDULER``, ``MANAGER``)
so a process exposes only its own series; the metric objects live at module
level (one process is one daemon, scheduler or manager) and code updates them
directly — an increment is a lock and an add, cheap enough for every piece.
"""

from dffs.metrics.definitions import DAEMON, MANAGER, SCHEDULER, daemon, manager, scheduler

__all__ = ["DAEMON", "MANAGER", "SCHEDULER", "daemon", "manager", "scheduler"]
