"""Presentation state (docs/protocol.md §9.1): the `presentations` table (what each
conference shows, on which page) and `items.sealed_pages` (a PDF's page count, sealed under
the item's key like its name).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("sealed_pages", sa.LargeBinary(), nullable=True))
    op.create_table(
        "presentations",
        sa.Column("conference_id", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("page", sa.Integer(), nullable=False),
        sa.Column("presenter_pid", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["conference_id"], ["conferences.id"]),
        sa.PrimaryKeyConstraint("conference_id"),
    )


def downgrade() -> None:
    op.drop_table("presentations")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("sealed_pages")
