"""Pause and resume: ``jobs.pause_requested``, the flag a running job's runner reads after every step (as it
reads ``cancel_requested``) to save a checkpoint at that step and end the job ``paused``.

Existing rows get ``false``: no job was pausing before this column existed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A database whose tables were made from today's models (as the tests of old versions make theirs, before
    # marking them with an old schema_version) has the column already: nothing to add.
    if "pause_requested" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("jobs")}:
        return
    # a plain ADD COLUMN on both dialects (SQLite takes a NOT NULL column with a constant default): no batch mode,
    # whose copy of ``jobs`` on SQLite would drop the table its children's ON DELETE CASCADE keys point to
    op.add_column("jobs", sa.Column("pause_requested", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("jobs", "pause_requested")  # SQLite 3.35+ drops a column in place
