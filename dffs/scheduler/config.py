"""``dffs scheduler`` configuration: defaults, TOML keys of the same names, flags win."""

from __future__ import annotations

import socket

import attrs

from dffs.errors import UsageError
from dffs.scheduler.policy import DEFAULT_FILTER_PARENT_LIMIT, PolicyConfig

DEFAULT_LISTEN = "0.0.0.0:8002"


def _positive(instance, attribute, value) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def _non_negative(instance, attribute, value) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


def _seconds(**kwargs):
    return attrs.field(converter=float, validator=_positive, **kwargs)


def _count(default: int, validator=_non_negative):
    return attrs.field(default=default, converter=int, validator=validator)


@attrs.frozen
class SchedulerConfig:
    """Every key here is also a TOML key of ``--config FILE`` (dashes or underscores)."""

    #: gRPC address: HOST:PORT (port 0 picks a free one), or unix:PATH.
    listen: str = DEFAULT_LISTEN
    #: Manager to register with (HOST:PORT of its gRPC API); None: standalone.
    manager: str | None = None
    #: The address daemons reach this scheduler at, as told to the manager
    #: (default: the listen host, or 127.0.0.1 when that is a wildcard).
    advertise_ip: str | None = None
    hostname: str = attrs.field(factory=socket.gethostname)
    idc: str = ""
    location: str = ""
    #: Manager cluster to join (0: the default cluster).
    cluster_id: int = _count(0)
    #: Seconds between keepalives to the manager, and between refreshes of the
    #: cluster's dynamic config and seed peers.
    manager_refresh_interval: float = _seconds(default=10.0)
    #: Parents offered per answer (K).
    candidate_parent_limit: int = _count(4, _positive)
    #: Peers examined per scheduling decision, drawn at random from those that
    #: can serve (0: all of them, which costs time in proportion to the task's size).
    filter_parent_limit: int = _count(DEFAULT_FILTER_PARENT_LIMIT)
    #: A peer silent this long is forgotten.
    peer_ttl: float = _seconds(default=24 * 3600.0)
    #: A task with no peers is forgotten this long after its last activity.
    task_ttl: float = _seconds(default=24 * 3600.0)
    #: A host that announced without an interval is dropped after this much silence ...
    host_ttl: float = _seconds(default=300.0)
    #: ... and one that stated its interval after this many silent intervals.
    host_ttl_intervals: float = _seconds(default=3.0)
    #: A failed peer stays visible (StatPeer) this long.
    failed_peer_ttl: float = _seconds(default=60.0)
    #: How often the GC runs.
    gc_interval: float = _seconds(default=60.0)
    #: Normal peers of one task on the origin at once, with no seed host in the cluster ...
    back_to_source_limit: int = _count(3)
    #: ... and with a seed host (the seed itself does not count).
    back_to_source_limit_with_seed: int = _count(1)
    #: Fruitless scheduling rounds before a peer may be sent to the origin.
    retry_back_to_source_rounds: int = _count(3)
    #: Rounds after which the origin is used regardless of the limit (or the download refused).
    retry_limit: int = _count(10, _positive)
    #: Seconds per scheduling round.
    retry_interval: float = _seconds(default=0.5)
    #: A triggered seed that has not registered the task by then is given up on.
    seed_trigger_timeout: float = _seconds(default=30.0)
    #: After a seed failed a task, do not trigger one for it again for this long.
    seed_trigger_backoff: float = attrs.field(default=60.0, converter=float, validator=_non_negative)
    #: Concurrent uploads a host accepts, normal and seed (label upload_slots overrides).
    upload_slots: int = _count(50, _positive)
    seed_upload_slots: int = _count(200, _positive)
    #: Pieces per task at most (bounds memory per peer).
    max_piece_count: int = _count(1 << 17, _positive)
    #: Largest gRPC message accepted or sent.
    max_message_bytes: int = _count(16 * 1024 * 1024, _positive)
    #: Prometheus /metrics and /healthy (HTTP) on the listen address's host; 0: any free port, -1: off.
    metrics_port: int = attrs.field(default=8000, converter=int)
    #: Pieces a child fetches at once across its parents (0 = the daemon's default).
    concurrent_piece_count: int = _count(0)
    #: The cluster key file (``dffs cluster init``); default /etc/dffs/cluster.key when it exists.
    cluster_key: str | None = None
    #: Plain text, members unauthenticated (a warning is logged).
    insecure: bool = False
    #: Where a key is made when everything is on loopback (shared with a default daemon there).
    data_dir: str = "/var/lib/dffs"

    def policy(self) -> PolicyConfig:
        return PolicyConfig(
            candidate_parent_limit=self.candidate_parent_limit,
            filter_parent_limit=self.filter_parent_limit,
            back_to_source_limit=self.back_to_source_limit,
            back_to_source_limit_with_seed=self.back_to_source_limit_with_seed,
            retry_back_to_source_rounds=self.retry_back_to_source_rounds,
            retry_limit=self.retry_limit,
            seed_trigger_backoff=self.seed_trigger_backoff,
        )


def check_listen(address: str) -> str:
    """``address`` when it is HOST:PORT or unix:PATH; UsageError otherwise."""
    if address.startswith(("unix:", "unix-abstract:")):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"bad listen address {address!r}: expected HOST:PORT or unix:PATH")
    return address
