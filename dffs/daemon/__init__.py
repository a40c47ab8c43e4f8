"""The per-host daemon: storage, piece upload, P2P downloads, and the optional mount."""
