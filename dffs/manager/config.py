"""``dffs manager`` configuration: defaults, TOML keys of the same names, flags win."""

from __future__ import annotations

import attrs

from dffs.errors import UsageError

DEFAULT_LISTEN = "0.0.0.0:65003"
DEFAULT_HTTP_LISTEN = "0.0.0.0:65004"
DEFAULT_DB = "sqlite:////var/lib/dffs/manager.db"


def _positive(instance, attribute, value) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@attrs.frozen
class ManagerConfig:
    """Every key here is also a TOML key of ``--config FILE`` (dashes or underscores)."""

    #: gRPC address, HOST:PORT (port 0 picks a free one).
    listen: str = DEFAULT_LISTEN
    #: JSON-over-HTTP API address, HOST:PORT; "" turns the HTTP API off.
    http_listen: str = DEFAULT_HTTP_LISTEN
    #: sqlite:///relative.db, sqlite:////absolute.db or postgresql://user@host:port/db.
    db: str = DEFAULT_DB
    #: A member whose last keepalive is older than this is marked inactive.
    keepalive_ttl: float = attrs.field(default=30.0, converter=float, validator=_positive)
    #: How often expired members are looked for; 0 means keepalive_ttl / 3.
    expire_interval: float = attrs.field(default=0.0, converter=float)
    #: Seconds to wait for the database when connecting.
    db_connect_timeout: float = attrs.field(default=5.0, converter=float, validator=_positive)
    #: How often pending preheat jobs are looked for.
    job_poll_interval: float = attrs.field(default=1.0, converter=float, validator=_positive)
    #: Seconds one host may take for one preheat download.
    preheat_timeout: float = attrs.field(default=3600.0, converter=float, validator=_positive)
    #: Seconds per request to an image registry (manifest, token).
    registry_timeout: float = attrs.field(default=10.0, converter=float, validator=_positive)
    #: The cluster key file (``dffs cluster init``); default /etc/dffs/cluster.key when it exists.
    cluster_key: str | None = None
    #: Plain text, members unauthenticated (a warning is logged).
    insecure: bool = False
    #: Where a key is made when everything is on loopback, and where the HTTP API token's hash is kept.
    data_dir: str = "/var/lib/dffs"


def check_host_port(value: str, what: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"{what} must be HOST:PORT, not {value!r}")
