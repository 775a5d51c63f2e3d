"""Stop requests with a reason, opaque event ids, file expiry.

- ``jobs.stop_reason`` (``cancel``, ``pause``, ``shutdown``) replaces the ``cancel_requested`` flag: cancel,
  pause and a worker's graceful shutdown share one checkpoint-and-stop request.
- ``job_events.public_id``: opaque event ids (cursors); existing events keep the ids they were shown with
  (``ftevent-<row id>``).
- ``files.expires_at``: OpenAI's ``expires_after`` on uploads.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stop_reason", sa.String(length=16), nullable=True))
    op.execute("UPDATE jobs SET stop_reason = 'cancel' WHERE cancel_requested")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("cancel_requested")

    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("public_id", sa.String(length=64), nullable=True))
    op.execute("UPDATE job_events SET public_id = 'ftevent-' || CAST(id AS VARCHAR(20))")
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.alter_column("public_id", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index(batch_op.f("ix_job_events_public_id"), ["public_id"], unique=True)

    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("expires_at")

    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_events_public_id"))
        batch_op.drop_column("public_id")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute("UPDATE jobs SET cancel_requested = (stop_reason = 'cancel') WHERE stop_reason IS NOT NULL")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("cancel_requested", existing_type=sa.Boolean(), server_default=None)
        batch_op.drop_column("stop_reason")
