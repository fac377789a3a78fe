"""The per-conference event log (conference_events, conferences.last_seq) and focus leases
(focus_nodes, participants.focus_node) for nodes sharing one database (issue 10).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("conferences") as batch:
        batch.add_column(sa.Column("last_seq", sa.BigInteger(), nullable=False,
                                   server_default="0"))
    with op.batch_alter_table("participants") as batch:
        batch.add_column(sa.Column("focus_node", sa.String(length=128), nullable=True))
        batch.create_index("ix_participants_focus_node", ["focus_node"])
    op.create_table(
        "conference_events",
        sa.Column("conference_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("participant_id", sa.String(length=64), nullable=True),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("payload", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["conference_id"], ["conferences.id"]),
        sa.PrimaryKeyConstraint("conference_id", "seq"),
    )
    op.create_index("ix_conference_events_created", "conference_events", ["created_at"])
    op.create_table(
        "focus_nodes",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("focus_nodes")
    op.drop_index("ix_conference_events_created", table_name="conference_events")
    op.drop_table("conference_events")
    with op.batch_alter_table("participants") as batch:
        batch.drop_index("ix_participants_focus_node")
        batch.drop_column("focus_node")
    with op.batch_alter_table("conferences") as batch:
        batch.drop_column("last_seq")
