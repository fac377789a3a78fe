"""Derived items (docs/protocol.md §9.4): `items.derived_from`, the item a converted deck's
PDF was made from, indexed so that deleting a deck finds its PDF.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("derived_from", sa.String(length=64), nullable=True))
        batch.create_index("ix_items_derived_from", ["derived_from"])


def downgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.drop_index("ix_items_derived_from")
        batch.drop_column("derived_from")
