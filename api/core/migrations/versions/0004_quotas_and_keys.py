"""Per-project and per-key limit overrides.

- ``projects.limits`` and ``api_keys.limits``: JSON overrides of the settings' rate limits and quotas
  (``requests_per_second``, ``burst``, ``concurrent_devices``, ``stored_bytes``, ``pinned_bytes``); NULL keeps the
  deployment defaults. A key's override wins over its project's.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("projects", "api_keys"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("limits", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in ("api_keys", "projects"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("limits")
