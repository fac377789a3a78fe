"""Tenant settings and the download switch (docs/protocol.md §8.3, §8.6):
`conferences.downloads` (the organizer lets attendees download, or not) and the
`tenant_settings` table (an operator's per-tenant settings, `webconf tenant set`:
`server_decrypt` turns the decrypting download on or off; `shred_content_at_end` shreds a
conference's content when it ends instead of after the grace period).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("conferences") as batch:
        batch.add_column(sa.Column("downloads", sa.Boolean(), nullable=False,
                                   server_default=sa.true()))
    op.create_table(
        "tenant_settings",
        sa.Column("tenant", sa.String(length=255), nullable=False),
        sa.Column("server_decrypt", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("shred_content_at_end", sa.Boolean(), nullable=False,
                  server_default=sa.false()),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tenant"),
    )


def downgrade() -> None:
    op.drop_table("tenant_settings")
    with op.batch_alter_table("conferences") as batch:
        batch.drop_column("downloads")
