"""The snapshotter's settings: TOML key ``snapshotter`` (``true``, or a table of these options)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from dffs.errors import UsageError


def _positive(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive")


@attrs.frozen
class SnapshotterConfig:
    #: Longest one read of a lazily served file may take before it fails with EIO.
    read_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: Longest mounting a layer may take (index fetch or build) before it is unpacked instead.
    mount_timeout: float = attrs.field(default=600.0, validator=_positive)
    #: Background prefetch of mounted layers (learned files first, then the rest).
    prefetch: bool = True
    #: Background prefetch bandwidth cap, bytes per second (on-demand reads are not capped).
    prefetch_rate: float = attrs.field(default=20e6, validator=_positive)
    #: Seconds after a layer is mounted before the rest of its blob is fetched.
    prefetch_delay: float = attrs.field(default=2.0, validator=attrs.validators.ge(0))
    #: Seconds after an image's first read during which its containers' reads are recorded.
    record_window: float = attrs.field(default=10.0, validator=_positive)


def from_toml(value: Any) -> SnapshotterConfig:
    """``snapshotter = true`` or ``[snapshotter]`` with options; UsageError on anything else."""
    if value is True or value is None:
        return SnapshotterConfig()
    if not isinstance(value, Mapping):
        raise UsageError("config key 'snapshotter' must be true or a table of snapshotter options")
    names = {f.name for f in attrs.fields(SnapshotterConfig)}
    options = {k.replace("-", "_"): v for k, v in value.items()}
    unknown = sorted(set(options) - names)
    if unknown:
        raise UsageError(f"unknown snapshotter option {unknown[0]!r}")
    try:
        return SnapshotterConfig(**options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad snapshotter option: {exc}") from None
