"""Initial schema: clusters (with the default cluster 1), schedulers, seed_peers, jobs.

Revision ID: 0001
Revises:
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _member_columns() -> list:
    return [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("ip", sa.String(64), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("idc", sa.String(255), nullable=False),
        sa.Column("location", sa.String(1024), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_keepalive", sa.Float, nullable=False),
        sa.Column("cluster_id", sa.Integer, sa.ForeignKey("clusters.id"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    ]


def upgrade() -> None:
    clusters = op.create_table(
        "clusters",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "schedulers",
        *_member_columns(),
        sa.UniqueConstraint("hostname", "ip", "cluster_id", name="uq_schedulers_member"),
    )
    op.create_table(
        "seed_peers",
        *_member_columns(),
        sa.Column("download_port", sa.Integer, nullable=False),
        sa.Column("type", sa.Integer, nullable=False),
        sa.UniqueConstraint("hostname", "ip", "cluster_id", name="uq_seed_peers_member"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("cluster_ids", sa.JSON, nullable=False),
        sa.Column("args", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("results", sa.JSON, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    now = time.time()
    op.bulk_insert(clusters, [{"id": 1, "name": "default", "config": {}, "created_at": now, "updated_at": now}])
    if op.get_bind().dialect.name == "postgresql":
        # The explicit id 1 does not advance the serial sequence.
        op.execute("SELECT setval(pg_get_serial_sequence('clusters', 'id'), (SELECT MAX(id) FROM clusters))")


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("seed_peers")
    op.drop_table("schedulers")
    op.drop_table("clusters")
