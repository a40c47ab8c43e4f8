"""Cache GC: which pieces and tasks to evict (``policy``, pure) and the daemon's loop (``service``)."""

from dffs.gc.policy import GcLimits, PieceState, Plan, TaskState, parse_quota, plan

__all__ = ["GcLimits", "PieceState", "Plan", "TaskState", "parse_quota", "plan"]
