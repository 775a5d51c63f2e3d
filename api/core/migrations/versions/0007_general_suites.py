"""Evaluation chosen per job and general-ability suites.

- ``base_models.general_suite``: the general-ability files an admin registered with the base model
  (``[{"name", "path", "metric"}]``); every job on the model is evaluated on them for retention.
- ``jobs.evaluation``: the job's evaluation spec (metrics, max_examples, max_new_tokens, judge).
- ``jobs.general_files``: the job's own general-ability files (``[{"file", "metric"}]``).
- ``jobs.evaluation_result``: task summary, retention report and headline, once the job evaluated.

All nullable: existing rows mean "no suite", "default evaluation", "no result yet".

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("general_suite", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("evaluation", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("general_files", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("evaluation_result", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("evaluation_result")
        batch_op.drop_column("general_files")
        batch_op.drop_column("evaluation")
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.drop_column("general_suite")
