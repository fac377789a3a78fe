"""Content lifecycle (docs/protocol.md §8.6): `tenants.retain_content` goes, because the
grace model turned its meaning around (content is kept for `wcs.content_grace_seconds`
after every end); a tenant's `shred_content_at_end` setting (`tenant_settings`, revision
0005) shreds it at the end instead.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("retain_content")


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("retain_content", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
