"""Configuration: frozen attrs classes with defaults, a TOML file, and flags that win.

Every command-line flag has a TOML key of the same name (dashes or
underscores). Unknown keys are an error, so a typo in a config file is
reported instead of silently ignored.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from dffs.errors import UsageError

DEFAULT_DATA_DIR = Path("/var/lib/dffs")


@attrs.frozen
class GetConfig:
    """`dffs get` / `dfget`."""

    data_dir: Path = DEFAULT_DATA_DIR
    #: Pieces in flight at once.
    concurrency: int = attrs.field(default=8, validator=attrs.validators.in_(range(1, 257)))
    #: Whole-download deadline in seconds; 0 means none.
    timeout: float = 0.0
    #: Longest silence from the origin before a request is retried.
    read_timeout: float = 30.0
    connect_timeout: float = 10.0
    #: Attempts per origin request (first included).
    attempts: int = 4
    #: Extra CA certificates (PEM) to trust for https origins.
    ca_file: str | None = None
    socket: Path | None = None
    scheduler: str | None = None
    manager: str | None = None
    #: Joining the swarm without a daemon (--scheduler/--manager): the cluster key, or plain text.
    cluster_key: str | None = None
    insecure: bool = False


def load_toml(path: Path | str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path}: {exc}") from None


def build(cls: type, file_values: Mapping[str, Any], flag_values: Mapping[str, Any], *, ignore: Iterable[str] = ()):
    """An instance of the attrs class ``cls``: defaults < file values < flags given.

    ``flag_values`` holds every flag; a flag counts as given when not None.
    """
    fields = {f.name: f for f in attrs.fields(cls)}
    ignored = set(ignore)
    values: dict[str, Any] = {}
    for key, value in file_values.items():
        name = key.replace("-", "_")
        if name in ignored:
            continue
        if name not in fields:
            raise UsageError(f"unknown config key {key!r}")
        values[name] = value
    for name, value in flag_values.items():
        if name in fields and value is not None:
            values[name] = value
    for name, value in list(values.items()):
        default = fields[name].default
        if isinstance(default, Path) or name in ("data_dir", "socket"):
            values[name] = Path(value) if value is not None else None
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad configuration: {exc}") from None
