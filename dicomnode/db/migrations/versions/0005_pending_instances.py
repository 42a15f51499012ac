"""Pending instance marks: rows committed while their file's fsync may still be running.

The receiver commits an instance's row while it fsyncs the file (one disk wait instead of
three) and marks the row pending until the file is known durable (receive/recorder.py). A
node's start-up checks its own marks (``node``) against the files (receive/reconcile.py).
Only a new table: no existing row is touched.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_instances",
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("sop_instance_uid", name="pk_pending_instances"),
    )
    op.create_index("ix_pending_instances_node", "pending_instances", ["node"], unique=False)
