"""Which transport a process runs with: the rules of ``--cluster-key`` and ``--insecure``.

1. ``--cluster-key FILE`` (config key ``cluster_key``), else the file named by the
   environment variable ``DFFS_CLUSTER_KEY`` (for systemd units and test
   harnesses that start many members), else ``/etc/dffs/cluster.key`` when it
   exists, else ``DATA_DIR/cluster.key`` when it exists and the process is on
   loopback alone.
2. No key and ``--insecure``: plain text, with a warning in the log.
3. No key, on loopback alone (every listen and every member address is
   loopback or a Unix socket): a key is created at ``DATA_DIR/cluster.key``, so
   a one-host cluster (``dffs up``) needs no setup.
4. Otherwise the process refuses to start, with one line saying how to make a key.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from dffs.errors import UsageError
from dffs.security.ca import Identity, create_cluster_key, load_cluster_key

if TYPE_CHECKING:
    from dffs.security.transport import Transport

log = logging.getLogger(__name__)

DEFAULT_CLUSTER_KEY = Path("/etc/dffs/cluster.key")
KEY_FILE_NAME = "cluster.key"
#: Names the cluster key file when no flag or config key does.
KEY_ENV = "DFFS_CLUSTER_KEY"


def default_key() -> Path | None:
    """The cluster key a process uses when none is given: $DFFS_CLUSTER_KEY, else /etc/dffs/cluster.key."""
    named = os.environ.get(KEY_ENV)
    if named:
        return Path(named)
    return DEFAULT_CLUSTER_KEY if DEFAULT_CLUSTER_KEY.exists() else None


def host_of(address: str) -> str | None:
    """The host part of ``HOST:PORT`` / ``[V6]:PORT`` / a bare host; None for a Unix socket."""
    if address.startswith("unix:"):
        return None
    if address.startswith("["):
        return address[1:].partition("]")[0]
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host
    return address


def is_loopback(address: str) -> bool:
    """Whether ``address`` (HOST:PORT, a bare host, or unix:PATH) stays on this host."""
    host = host_of(address)
    if host is None:
        return True
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def make_transport(
    component: str,
    identity: Identity,
    *,
    cluster_key: Path | str | None,
    insecure_ok: bool,
    data_dir: Path | None,
    addresses: Iterable[str],
    cert_addresses: tuple[str, ...] = (),
    create: bool = True,
) -> Transport:
    """The transport for ``dffs COMPONENT``; ``addresses`` are every address it listens on or dials.

    (grpc is imported here, not at module level: the CLI must set GRPC_VERBOSITY before grpc loads.)

    ``create=False`` for clients (``dffs ctl``): a key made now would match no server."""
    from dffs.security.transport import insecure, secure

    explicit = Path(cluster_key) if cluster_key else None
    if explicit is not None and insecure_ok:
        raise UsageError("--insecure and --cluster-key exclude each other")
    loopback_only = all(is_loopback(a) for a in addresses)
    local_key = data_dir / KEY_FILE_NAME if data_dir is not None else None
    path = explicit
    if path is None and not insecure_ok:
        if (default := default_key()) is not None:
            path = default
        elif local_key is not None and loopback_only and (create or local_key.exists()):
            if not local_key.exists():
                create_cluster_key(local_key, name="dffs one-host cluster")
                log.info("event=cluster_key_created path=%s reason=loopback_only", local_key)
            path = local_key
    if path is not None:
        key = load_cluster_key(path)
        transport = secure(key, identity, addresses=cert_addresses)
        log.info("event=cluster_auth mode=mtls cluster=%s identity=%s key=%s", key.fingerprint, identity.uri, path)
        return transport
    if insecure_ok:
        log.warning(
            "event=cluster_auth mode=insecure detail='--insecure: members are not authenticated; anyone who can "
            "reach this %s can use it'",
            component,
        )
        return insecure()
    raise UsageError(
        f"no cluster key: cluster members must authenticate each other. Make one with "
        f"`dffs cluster init {DEFAULT_CLUSTER_KEY}` and copy it (mode 0600) to every member, or pass "
        f"--cluster-key FILE (or --insecure to run without authentication)"
    )
