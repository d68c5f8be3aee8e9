"""CreditGrant and GrantDraw: credits that expire, and what usage drew from each.

A grant is a positive ADJUSTMENT (its id is the grant's); `remaining` is what is left of it, and
one GrantDraw per grant and USAGE row records what that row drew from it, so that reconcile
proves `remaining = amount - SUM(draws) - expired`. Both cascade with the platform's deletes of
the rows they name.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP_MS = postgresql.TIMESTAMP(precision=3)


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("CreditGrant"):
        return  # Prisma's migration of our additions made them
    op.create_table(
        "CreditGrant",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("expiresAt", TIMESTAMP_MS, nullable=False),
        sa.Column("expiredAt", TIMESTAMP_MS, nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column(
            "createdAt", TIMESTAMP_MS, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="CreditGrant_pkey"),
        sa.ForeignKeyConstraint(
            ["id"],
            ["CreditTransaction.id"],
            name="CreditGrant_id_fkey",
            onupdate="CASCADE",
            ondelete="CASCADE",
        ),
    )
    op.create_index("CreditGrant_userId_idx", "CreditGrant", ["userId"])
    op.create_index(
        "CreditGrant_expiredAt_expiresAt_idx", "CreditGrant", ["expiredAt", "expiresAt"]
    )
    op.create_table(
        "GrantDraw",
        sa.Column("grantId", sa.Text(), nullable=False),
        sa.Column("transactionId", sa.Text(), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("grantId", "transactionId", name="GrantDraw_pkey"),
        sa.ForeignKeyConstraint(
            ["grantId"],
            ["CreditGrant.id"],
            name="GrantDraw_grantId_fkey",
            onupdate="CASCADE",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["transactionId"],
            ["CreditTransaction.id"],
            name="GrantDraw_transactionId_fkey",
            onupdate="CASCADE",
            ondelete="CASCADE",
        ),
    )
    op.create_index("GrantDraw_transactionId_idx", "GrantDraw", ["transactionId"])


def downgrade() -> None:
    op.drop_table("GrantDraw")
    op.drop_table("CreditGrant")
