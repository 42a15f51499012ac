"""The learning loop: what each analysed series was scored on, and the outcomes that came later.

Revision 0008, after 0007. Forward
only: to go back, restore the backup taken before `dicomnode db upgrade`. Tested in
tests/unit/db/test_revisions.py (rows written at the previous revision survive the upgrade).
Only new tables: no existing row is touched.

- ``series_predictions``: per analysed series, the features and each model's risk.
- ``expansion_outcomes``: per follow-up comparison, the baseline's expansion (yes/no by the
  configured definition) and the risk predicted at baseline with its model.
- ``clinical_outcomes``: outcomes imported by the department (`dicomnode outcomes import`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "series_predictions",
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("he_probability", sa.Float(), nullable=True),
        sa.Column("he_model", sa.String(length=128), nullable=False),
        sa.Column("he_model_version", sa.String(length=64), nullable=False),
        sa.Column("pse_probability", sa.Float(), nullable=True),
        sa.Column("pse_model", sa.String(length=128), nullable=False),
        sa.Column("pse_model_version", sa.String(length=64), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["series_id"], ["series.id"],
                                name="fk_series_predictions_series_id"),
        sa.PrimaryKeyConstraint("series_id", name="pk_series_predictions"),
    )
    op.create_table(
        "expansion_outcomes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("baseline_series_id", sa.Integer(), nullable=False),
        sa.Column("followup_series_id", sa.Integer(), nullable=False),
        sa.Column("interval_h", sa.Float(), nullable=True),
        sa.Column("baseline_ich_volume_ml", sa.Float(), nullable=False),
        sa.Column("followup_ich_volume_ml", sa.Float(), nullable=False),
        sa.Column("ich_change_ml", sa.Float(), nullable=False),
        sa.Column("ich_change_pct", sa.Float(), nullable=True),
        sa.Column("new_ivh", sa.Boolean(), nullable=False),
        sa.Column("expansion", sa.Boolean(), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("registration_trusted", sa.Boolean(), nullable=False),
        sa.Column("he_probability", sa.Float(), nullable=True),
        sa.Column("he_model", sa.String(length=128), nullable=False),
        sa.Column("he_model_version", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["baseline_series_id"], ["series.id"],
                                name="fk_expansion_outcomes_baseline_series_id"),
        sa.ForeignKeyConstraint(["followup_series_id"], ["series.id"],
                                name="fk_expansion_outcomes_followup_series_id"),
        sa.PrimaryKeyConstraint("id", name="pk_expansion_outcomes"),
        sa.UniqueConstraint("baseline_series_id", "followup_series_id"),
    )
    op.create_index("ix_expansion_outcomes_baseline_series_id", "expansion_outcomes",
                    ["baseline_series_id"], unique=False)
    op.create_index("ix_expansion_outcomes_followup_series_id", "expansion_outcomes",
                    ["followup_series_id"], unique=False)
    op.create_table(
        "clinical_outcomes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_kind", sa.String(length=24), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Boolean(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("imported_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_clinical_outcomes"),
        sa.UniqueConstraint("key_kind", "key", "outcome"),
    )
