"""``dffs image``: pull images into containerd for the dffs snapshotter, and its config fragment."""
