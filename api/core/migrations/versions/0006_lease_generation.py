"""Fencing tokens: ``jobs.lease_generation``, incremented on every lease acquisition.

A worker carries the generation it claimed with into every write that is not on the jobs row itself
(checkpoint rows, metrics events, the adapter row, checkpoint files); a write whose generation is no longer
the job's is refused, so a stalled worker and its replacement never both write.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_generation", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("lease_generation")
