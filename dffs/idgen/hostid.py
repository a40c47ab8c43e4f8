"""Host identity: the same host ID whoever computes it (the daemon itself, or a
scheduler that learns a seed peer from the manager before the seed announces)."""

from __future__ import annotations

import hashlib


def host_id(ip: str, hostname: str, seed: bool) -> str:
    kind = "seed" if seed else "normal"
    return hashlib.sha256(f"{ip}|{hostname}|{kind}".encode()).hexdigest()[:32]
