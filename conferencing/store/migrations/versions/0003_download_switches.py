"""The download switches (issue 12, docs/protocol.md §8.3): `conferences.downloads` (the
organizer lets attendees download, or not) and the `tenant_settings` table (an operator's
per-tenant settings; `server_decrypt` turns the decrypting download on or off).

Revision ID: 0003_download_switches
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003_download_switches"
down_revision: str | None = "0002"
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
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tenant"),
    )


def downgrade() -> None:
    op.drop_table("tenant_settings")
    with op.batch_alter_table("conferences") as batch:
        batch.drop_column("downloads")
