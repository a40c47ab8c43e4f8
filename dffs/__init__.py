"""dffs: a Python re-imagining of the Dragonfly P2P file distribution system."""

__version__ = "0.1.0"
