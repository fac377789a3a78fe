"""The tenant directory's tables as of webconf 0.1 (HA1s sealed), exactly as
focus/schema.py defined them then.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "directory_tenants",
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("domain"),
    )
    op.create_table(
        "sip_users",
        sa.Column("realm", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("ha1_md5_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("ha1_sha256_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["realm"], ["directory_tenants.domain"]),
        sa.PrimaryKeyConstraint("realm", "username"),
    )


def downgrade() -> None:
    op.drop_table("sip_users")
    op.drop_table("directory_tenants")
