"""Alembic takes over from the hand-written versions: ``schema_version`` holds 9 from now on.

The table stays, frozen: a release before Alembic reads 9 as a newer schema than its own (8 at most) and
refuses the database with its error, instead of creating an empty ``schema_version``, taking the database for
its own version and writing to tables it does not know. ``alembic_version`` says the schema's revision.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ALEMBIC_ERA = 9  # store.db.SCHEMA_VERSION


def upgrade() -> None:
    op.execute(sa.text("DELETE FROM schema_version"))
    op.execute(sa.text(f"INSERT INTO schema_version (version) VALUES ({ALEMBIC_ERA})"))


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM schema_version"))
    op.execute(sa.text("INSERT INTO schema_version (version) VALUES (8)"))
