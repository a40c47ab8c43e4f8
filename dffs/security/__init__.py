"""Trust between cluster members: the cluster CA, member certificates, transports, signed piece requests.

See docs/security.md for the threat model and how to run a cluster.
"""

from dffs.security.ca import CLUSTER_NAME, ClusterKey, Identity, create_cluster_key, load_cluster_key
from dffs.security.pieceauth import PieceAuth, PieceAuthError
from dffs.security.setup import DEFAULT_CLUSTER_KEY, is_loopback, make_transport
from dffs.security.transport import Transport, insecure, secure

__all__ = [
    "CLUSTER_NAME",
    "DEFAULT_CLUSTER_KEY",
    "ClusterKey",
    "Identity",
    "PieceAuth",
    "PieceAuthError",
    "Transport",
    "create_cluster_key",
    "insecure",
    "is_loopback",
    "load_cluster_key",
    "make_transport",
    "secure",
]
