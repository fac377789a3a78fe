"""Customer Key (docs/protocol.md §8.4): a tenant key version may be wrapped by the tenant's
HSM keys and the availability key instead of a root key (tenant_keys.customer_wraps, with
wrapped_key and root_key_version then NULL), and each such tenant's HSM settings
(customer_keys).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenant_keys") as batch:
        batch.alter_column("wrapped_key", existing_type=sa.LargeBinary(), nullable=True)
        batch.alter_column("root_key_version", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("customer_wraps", sa.String(), nullable=True))
    op.create_table(
        "customer_keys",
        sa.Column("tenant", sa.String(length=255), nullable=False),
        sa.Column("module", sa.String(length=1024), nullable=False),
        sa.Column("token", sa.String(length=255), nullable=False),
        sa.Column("pin_file", sa.String(length=1024), nullable=False),
        sa.Column("labels", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.domain"]),
        sa.PrimaryKeyConstraint("tenant"),
    )


def downgrade() -> None:
    # A protected version has no root-wrapped copy to restore: refuse rather than leave
    # rows that the older code cannot read.
    bind = op.get_bind()
    protected = bind.execute(sa.text(
        "SELECT COUNT(*) FROM tenant_keys WHERE wrapped_key IS NULL")).scalar()
    if protected:
        raise RuntimeError("tenant keys protected by a Customer Key cannot be downgraded")
    op.drop_table("customer_keys")
    with op.batch_alter_table("tenant_keys") as batch:
        batch.drop_column("customer_wraps")
        batch.alter_column("root_key_version", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("wrapped_key", existing_type=sa.LargeBinary(), nullable=False)
