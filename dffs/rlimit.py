"""The process's open-file limit, raised to what the system allows before a server starts.

A daemon holds descriptors for task files (bounded by the storage's LRU),
sockets for uploads, downloads, gRPC streams and the mount; the soft default
of 1024 is far below the usual hard limit (524288 under systemd), so servers
raise the soft limit to the hard one at start, as systemd's own services do.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)


def raise_open_file_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        return soft
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:  # e.g. above the kernel's nr_open: keep what we have
        log.info("event=nofile_limit_unchanged soft=%d hard=%d error=%s", soft, hard, exc)
        return soft
    log.debug("event=nofile_limit_raised from=%d to=%d", soft, wanted)
    return wanted
