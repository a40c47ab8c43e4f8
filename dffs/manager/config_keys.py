"""The cluster config keys and the rules their values must follow.

Pure (no database, no I/O) because both sides use it: the manager checks a
patch before storing it (``store.py``), and every scheduler and daemon checks
what it reads again (``tunables.py``) without pulling SQLAlchemy into its
process.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from dffs.errors import UsageError

#: Keys a scheduler reads.
SCHEDULER_KEYS = frozenset({"candidate_parent_limit", "filter_parent_limit", "blocked_hosts"})
#: Keys a daemon (client) reads.
CLIENT_KEYS = frozenset({"upload_limit", "concurrent_piece_count", "gc_high_threshold", "gc_low_threshold"})
#: Keys that say which daemons the cluster serves (the manager ranks schedulers by them).
SCOPE_KEYS = frozenset({"idcs", "location", "cidrs"})
CONFIG_KEYS = SCHEDULER_KEYS | CLIENT_KEYS | SCOPE_KEYS | {"name"}


def _int_in(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{key} must be an integer from {low} to {high}, not {value!r}")
    return value


def _str_list(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f"{key} must be a list of non-empty strings")
    return value


def validate_config_patch(patch: Any) -> dict[str, Any]:
    """Checks a cluster config update; UsageError names the first bad key."""
    if not isinstance(patch, dict):
        raise UsageError("cluster config must be a JSON object")
    unknown = sorted(set(patch) - CONFIG_KEYS)
    if unknown:
        raise UsageError(f"unknown cluster config key {unknown[0]!r} (known: {', '.join(sorted(CONFIG_KEYS))})")
    out: dict[str, Any] = {}
    for key, value in patch.items():
        if key == "name":
            if not isinstance(value, str) or not value.strip():
                raise UsageError("name must be a non-empty string")
            out[key] = value.strip()
        elif key in ("candidate_parent_limit", "filter_parent_limit"):
            out[key] = _int_in(key, value, 1, 1000)
        elif key == "concurrent_piece_count":
            out[key] = _int_in(key, value, 1, 256)
        elif key == "upload_limit":
            out[key] = _int_in(key, value, 0, 2**53)
        elif key in ("gc_high_threshold", "gc_low_threshold"):
            out[key] = _int_in(key, value, 1, 100)
        elif key in ("blocked_hosts", "idcs"):
            out[key] = _str_list(key, value)
        elif key == "location":
            if not isinstance(value, str):
                raise UsageError("location must be a string such as 'country|province|city'")
            out[key] = value
        elif key == "cidrs":
            for cidr in _str_list(key, value):
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise UsageError(f"cidrs: {cidr!r} is not a network such as 10.0.0.0/8") from None
            out[key] = value
    return out
