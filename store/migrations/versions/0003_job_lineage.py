"""A job's lineage when it continues from a checkpoint of another job (store/lineage.py): the parent job, the
parent's checkpoint (``step-N``) and the original base model of the chain. Null for every job before.

Each column (and the index) is added only when missing: the tests that start from an old version build its tables
from today's models and then drop what that version lacked, which leaves these in place.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (("parent_job_id", 40), ("parent_checkpoint", 40), ("original_base_model", 200))
INDEX = "ix_jobs_parent_job_id"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = {column["name"] for column in inspector.get_columns("jobs")}
    with op.batch_alter_table("jobs") as batch:
        for name, size in COLUMNS:
            if name not in present:
                batch.add_column(sa.Column(name, sa.String(size), nullable=True))
    if INDEX not in {index["name"] for index in inspector.get_indexes("jobs")}:
        op.create_index(INDEX, "jobs", ["parent_job_id"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        for name, _size in reversed(COLUMNS):
            batch.drop_column(name)
