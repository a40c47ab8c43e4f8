"""The manager: cluster membership (schedulers, seed peers), per-cluster dynamic
configuration, and preheat jobs, kept in SQLite or PostgreSQL.  See README.md."""
