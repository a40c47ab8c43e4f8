"""Alembic migration scripts of the manager's schema (applied by ``dffs manager`` on start)."""
