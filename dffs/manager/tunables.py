"""What schedulers and daemons read from their cluster's dynamic config.

Pure: JSON text in, frozen values out. The manager validates keys when they
are written; members validate again (with the same rules) because a bad or
newer key must never stop a running process. A key that fails is ignored and
named in ``problems`` so the caller can log it once.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from dffs.errors import UsageError
from dffs.manager.config_keys import CLIENT_KEYS, SCHEDULER_KEYS, validate_config_patch


@attrs.frozen
class SchedulerTunables:
    candidate_parent_limit: int | None = None
    filter_parent_limit: int | None = None
    #: Hostnames never offered as parents nor triggered as seeds.
    blocked_hosts: frozenset[str] = frozenset()


@attrs.frozen
class ClientTunables:
    #: Upload bandwidth for all uploads of a daemon, bytes/s; 0 = unlimited; None = the daemon's own setting.
    upload_limit: int | None = None
    concurrent_piece_count: int | None = None
    gc_high_threshold: int | None = None
    gc_low_threshold: int | None = None


def _parse(text: str, keys: frozenset[str]) -> tuple[dict[str, Any], list[str]]:
    problems: list[str] = []
    try:
        raw = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        return {}, [f"config is not JSON: {exc}"]
    if not isinstance(raw, dict):
        return {}, ["config is not a JSON object"]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in keys:
            continue  # another side's key, or a newer manager's
        try:
            values.update(validate_config_patch({key: value}))
        except UsageError as exc:
            problems.append(str(exc))
    return values, problems


def scheduler_tunables(text: str) -> tuple[SchedulerTunables, list[str]]:
    values, problems = _parse(text, SCHEDULER_KEYS)
    if "blocked_hosts" in values:
        values["blocked_hosts"] = frozenset(values["blocked_hosts"])
    return SchedulerTunables(**values), problems


def client_tunables(text: str) -> tuple[ClientTunables, list[str]]:
    values, problems = _parse(text, CLIENT_KEYS)
    return ClientTunables(**values), problems
