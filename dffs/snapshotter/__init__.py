"""containerd's snapshots API (proxy plugin) with layers served lazily through dffs's FUSE layer."""
