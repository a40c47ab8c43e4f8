"""Command-line entry points: ``dffs`` and its ``dfget`` alias."""
