"""Pause and resume: ``jobs.pause_requested``, the flag a running job's runner reads after every step (as it
reads ``cancel_requested``) to save a checkpoint at that step and end the job ``paused``.

Existing rows get ``false``: no job was pausing before this column existed.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:  # SQLite alters a table by copying it; PostgreSQL in place
        batch.add_column(sa.Column("pause_requested", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("pause_requested")
