"""Priors from PACS: every query and retrieval made for a follow-up's prior (prior_retrievals).

Revision 0007, after 0006. Forward only: to go back, restore the backup taken before
`dicomnode db upgrade`. Tested in tests/unit/db/test_revisions.py (rows written at the previous
revision survive the upgrade). Only a new table: no existing row is touched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prior_retrievals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("peer", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=False),
        sa.Column("matches", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("warning", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_prior_retrievals_job_id_jobs"),
        sa.PrimaryKeyConstraint("id", name="pk_prior_retrievals"),
    )
    op.create_index("ix_prior_retrievals_job_id", "prior_retrievals", ["job_id"], unique=False)
    op.create_index("ix_prior_retrievals_series_instance_uid", "prior_retrievals",
                    ["series_instance_uid"], unique=False)
