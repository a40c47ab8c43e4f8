"""Trust between cluster members: the cluster CA and member certificates (``ca``), the rules of
``--cluster-key``/``--insecure`` (``setup``), transports (``transport``), signed piece requests
(``pieceauth``), what remote requests may name (``urls``) and credential redaction (``redact``).

Import the submodules; this package imports nothing (logging setup uses ``redact`` at every CLI start).
See docs/security.md for the threat model and how to run a cluster.
"""
