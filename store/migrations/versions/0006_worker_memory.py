"""Workers advertise their memory: ``workers_seen.memory_mib``, the MiB one job process has on the worker (its
GPU's total memory, or the host's RAM on a CPU worker), for the pre-flight estimate's fit (POST /v1/estimates) and
the submit check. Null for a worker of an older release: its jobs are not checked against it.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("workers_seen", sa.Column("memory_mib", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("workers_seen", "memory_mib")
