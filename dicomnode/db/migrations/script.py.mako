"""${message}

Revision ${up_revision}, after ${down_revision | comma,n}. Forward only: to go back, restore the
backup taken before `dicomnode db upgrade`. Tested in tests/unit/db/test_revisions.py (rows
written at the previous revision survive the upgrade).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}
