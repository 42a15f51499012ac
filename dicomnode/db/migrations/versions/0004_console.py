"""Console: audit log and paused destinations (worker liveness comes from the nodes table, 0003).

Revision 0004, after 0001. Forward only: to go back, restore the backup taken before
`dicomnode db upgrade`. Tested in tests/unit/db/test_revisions.py (rows written at the previous
revision survive the upgrade). Only new tables: no existing row is touched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("user", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("peer_address", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"], unique=False)
    op.create_table(
        "destination_pauses",
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("paused_at", sa.DateTime(), nullable=False),
        sa.Column("paused_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("destination", name="pk_destination_pauses"),
    )
