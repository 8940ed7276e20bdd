"""Messages form a tree (regenerate and edit keep the old reply as a sibling), replies keep a reasoning model's
thinking apart from the answer, and usage records replies served from the response cache.

Existing conversations become a single branch: each message's parent is the one before it, and the current
branch ends at the newest message.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("parent_id", sa.String(length=36), nullable=True))
    op.add_column("messages", sa.Column("reasoning", sa.Text(), nullable=True))
    op.create_index("ix_messages_parent_id", "messages", ["parent_id"])
    op.add_column("conversations", sa.Column("current_message_id", sa.String(length=36), nullable=True))
    op.add_column("usage", sa.Column("cached", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("usage", sa.Column("reasoning_tokens", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE messages SET parent_id = (SELECT earlier.id FROM messages AS earlier"
        " WHERE earlier.conversation_id = messages.conversation_id AND earlier.position = messages.position - 1)"
    )
    op.execute(
        "UPDATE conversations SET current_message_id = (SELECT newest.id FROM messages AS newest"
        " WHERE newest.conversation_id = conversations.id ORDER BY newest.position DESC LIMIT 1)"
    )


def downgrade() -> None:
    with op.batch_alter_table("usage") as usage:
        usage.drop_column("reasoning_tokens")
        usage.drop_column("cached")
    with op.batch_alter_table("conversations") as conversations:
        conversations.drop_column("current_message_id")
    op.drop_index("ix_messages_parent_id", table_name="messages")
    with op.batch_alter_table("messages") as messages:
        messages.drop_column("reasoning")
        messages.drop_column("parent_id")
