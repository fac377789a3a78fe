"""The store's tables as of webconf 0.1 (tenants, tenant keys, conferences, participants,
items, revoked cookies), exactly as conferencing/store/schema.py defined them then.

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
        "tenants",
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("current_key_version", sa.Integer(), nullable=False),
        sa.Column("retain_content", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("domain"),
    )
    op.create_table(
        "tenant_keys",
        sa.Column("tenant", sa.String(length=255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("root_key_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.domain"]),
        sa.PrimaryKeyConstraint("tenant", "version"),
    )
    op.create_table(
        "conferences",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=255), nullable=False),
        sa.Column("organizer", sa.String(length=512), nullable=False),
        sa.Column("uri_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.domain"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "organizer", "uri_id", name="uq_conferences_uri"),
    )
    op.create_table(
        "participants",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("conference_id", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=255), nullable=False),
        sa.Column("user", sa.String(length=512), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("joined_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("left_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["conference_id"], ["conferences.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("jti"),
    )
    op.create_index("ix_participants_conference", "participants", ["conference_id"])
    op.create_table(
        "items",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("conference_id", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=255), nullable=False),
        sa.Column("presenter_pid", sa.String(length=64), nullable=False),
        sa.Column("presenter", sa.String(length=512), nullable=False),
        sa.Column("blob_id", sa.String(length=32), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=False),
        sa.Column("tenant_key_version", sa.Integer(), nullable=False),
        sa.Column("sealed_name", sa.LargeBinary(), nullable=False),
        sa.Column("sealed_content_type", sa.LargeBinary(), nullable=False),
        sa.Column("sealed_sha256", sa.LargeBinary(), nullable=True),
        sa.Column("plaintext_size", sa.BigInteger(), nullable=False),
        sa.Column("ciphertext_size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["conference_id"], ["conferences.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("blob_id", name="uq_items_blob"),
    )
    op.create_index("ix_items_conference", "items", ["conference_id"])
    op.create_table(
        "revoked_cookies",
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("jti"),
    )
    op.create_index("ix_revoked_cookies_expires", "revoked_cookies", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_revoked_cookies_expires", table_name="revoked_cookies")
    op.drop_table("revoked_cookies")
    op.drop_index("ix_items_conference", table_name="items")
    op.drop_table("items")
    op.drop_index("ix_participants_conference", table_name="participants")
    op.drop_table("participants")
    op.drop_table("conferences")
    op.drop_table("tenant_keys")
    op.drop_table("tenants")
