"""The conference lock (docs/protocol.md §9.2): `conferences.locked`, set by the
organizer's `PATCH /v1/conferences/{conf}` `{"locked": true}`; while set, only the
organizer is admitted.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("conferences") as batch:
        batch.add_column(sa.Column("locked", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("conferences") as batch:
        batch.drop_column("locked")
