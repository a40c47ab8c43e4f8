"""The metric definitions, one namespace per process kind."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DAEMON = CollectorRegistry(auto_describe=True)
SCHEDULER = CollectorRegistry(auto_describe=True)
MANAGER = CollectorRegistry(auto_describe=True)

#: Piece fetches: from under a millisecond (local disk) to tens of seconds (a slow origin).
_PIECE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: FUSE operations are mostly cache hits (microseconds) with a tail of cold reads.
_FUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30)

daemon = SimpleNamespace(
    download_bytes=Counter(
        "dffs_daemon_download_bytes",
        "Piece bytes made present, by where they came from "
        "(origin, peer) or served to readers from the local cache (local).",
        ["source"],
        registry=DAEMON,
    ),
    piece_seconds=Histogram(
        "dffs_daemon_piece_download_seconds",
        "Time to fetch one piece, by source.",
        ["source"],
        buckets=_PIECE_BUCKETS,
        registry=DAEMON,
    ),
    upload_bytes=Counter("dffs_daemon_upload_bytes", "Piece bytes uploaded to other peers.", registry=DAEMON),
    uploads=Counter("dffs_daemon_uploads", "Pieces uploaded to other peers.", registry=DAEMON),
    fuse_ops=Counter("dffs_daemon_fuse_operations", "FUSE operations, by operation.", ["op"], registry=DAEMON),
    fuse_errors=Counter(
        "dffs_daemon_fuse_errors", "FUSE operations that failed, by operation.", ["op"], registry=DAEMON
    ),
    fuse_seconds=Histogram(
        "dffs_daemon_fuse_operation_seconds",
        "FUSE operation latency, by operation.",
        ["op"],
        buckets=_FUSE_BUCKETS,
        registry=DAEMON,
    ),
    fuse_read_bytes=Counter("dffs_daemon_fuse_read_bytes", "Bytes returned by FUSE reads.", registry=DAEMON),
    cache_requests=Counter(
        "dffs_daemon_cache_requests",
        "Pieces readers asked for, by whether they were already here "
        "(hit) or had to be fetched (miss); hit ratio = hit / (hit + miss).",
        ["result"],
        registry=DAEMON,
    ),
    gc_evicted_pieces=Counter("dffs_daemon_gc_evicted_pieces", "Pieces evicted by the GC.", registry=DAEMON),
    gc_evicted_tasks=Counter(
        "dffs_daemon_gc_evicted_tasks", "Whole tasks evicted by the GC, by reason.", ["reason"], registry=DAEMON
    ),
    gc_evicted_bytes=Counter("dffs_daemon_gc_evicted_bytes", "Bytes freed by the GC.", registry=DAEMON),
    gc_runs=Counter("dffs_daemon_gc_runs", "GC passes.", registry=DAEMON),
    disk_used_bytes=Gauge(
        "dffs_daemon_disk_used_bytes", "Bytes of content files on disk (last GC measure).", registry=DAEMON
    ),
    quota_bytes=Gauge("dffs_daemon_storage_quota_bytes", "The GC's disk quota (0: none).", registry=DAEMON),
    tasks=Gauge("dffs_daemon_tasks", "Tasks this daemon has open.", registry=DAEMON),
    layer_on_demand_bytes=Counter(
        "dffs_daemon_layer_on_demand_bytes",
        "Blob bytes of a lazily served image layer fetched because a reader asked for them.",
        ["layer"],
        registry=DAEMON,
    ),
    layer_prefetched_bytes=Counter(
        "dffs_daemon_layer_prefetched_bytes",
        "Blob bytes of a lazily served image layer fetched ahead of readers (background prefetch).",
        ["layer"],
        registry=DAEMON,
    ),
    layer_present_ratio=Gauge(
        "dffs_daemon_layer_present_ratio",
        "Share (0-1) of a lazily served image layer's blob present on this host.",
        ["layer"],
        registry=DAEMON,
    ),
)

scheduler = SimpleNamespace(
    hosts=Gauge("dffs_scheduler_hosts", "Hosts known to the scheduler.", registry=SCHEDULER),
    tasks=Gauge("dffs_scheduler_tasks", "Tasks known to the scheduler.", registry=SCHEDULER),
    peers=Gauge("dffs_scheduler_peers", "Peers known to the scheduler.", registry=SCHEDULER),
    schedule_seconds=Histogram(
        "dffs_scheduler_schedule_seconds",
        "Time from a register or reschedule to the answer.",
        buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10),
        registry=SCHEDULER,
    ),
    decisions=Counter(
        "dffs_scheduler_decisions",
        "Scheduling answers, by kind (parents, back_to_source, empty, refused).",
        ["decision"],
        registry=SCHEDULER,
    ),
    pieces_deleted=Counter("dffs_scheduler_pieces_deleted", "Pieces hosts reported as evicted.", registry=SCHEDULER),
    finished_tasks=Counter(
        "dffs_scheduler_finished_tasks",
        "Whole tasks registered as finished peers without a stream (AnnounceFinishedTasks), by outcome.",
        ["outcome"],
        registry=SCHEDULER,
    ),
    gc_removed=Counter(
        "dffs_scheduler_gc_removed", "Hosts, peers and tasks removed by the GC.", ["kind"], registry=SCHEDULER
    ),
)

manager = SimpleNamespace(
    jobs=Gauge("dffs_manager_jobs", "Jobs in the database, by state.", ["state"], registry=MANAGER),
    members=Gauge("dffs_manager_members", "Active cluster members, by kind.", ["kind"], registry=MANAGER),
)
