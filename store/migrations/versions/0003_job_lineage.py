"""A job's lineage when it continues from a checkpoint of another job (store/lineage.py): the parent job, the
parent's checkpoint (``step-N``) and the original base model of the chain. Null for every job before.

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


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_job_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("parent_checkpoint", sa.String(40), nullable=True))
        batch.add_column(sa.Column("original_base_model", sa.String(200), nullable=True))
    op.create_index("ix_jobs_parent_job_id", "jobs", ["parent_job_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_parent_job_id", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("original_base_model")
        batch.drop_column("parent_checkpoint")
        batch.drop_column("parent_job_id")
