"""Association counters: accepted (and aborted) associations per node and result.

Rejected associations are rows of ``association_events`` (who and why); accepted ones are
only counted, one row per node and result incremented in place by the receiver's recorder
(receive/recorder.py), for ``dicomnode_associations_total{result}``. Only a new table: no
existing row is touched.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "association_counts",
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("node", "result", name="pk_association_counts"),
    )
