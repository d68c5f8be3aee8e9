"""The platform's billing schema, as Prisma creates it from its schema.prisma.

On a database where the platform's Prisma migration has already run, the tables exist and this
revision changes nothing: the service adopts them. Downgrading it drops them: only for databases of
our own (development and tests).

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP_MS = postgresql.TIMESTAMP(precision=3)
TRANSACTION_TYPE = postgresql.ENUM(
    "PURCHASE", "USAGE", "REFUND", "ADJUSTMENT", name="TransactionType", create_type=False
)


def _created_by_prisma() -> bool:
    return sa.inspect(op.get_bind()).has_table("User")


def upgrade() -> None:
    if _created_by_prisma():
        return
    TRANSACTION_TYPE.create(op.get_bind())
    op.create_table(
        "User",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("credits", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "createdAt", TIMESTAMP_MS, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column("updatedAt", TIMESTAMP_MS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="User_pkey"),
    )
    op.create_table(
        "CreditTransaction",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("type", TRANSACTION_TYPE, nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("stripePaymentId", sa.Text(), nullable=True),
        sa.Column("stripeCheckoutId", sa.Text(), nullable=True),
        sa.Column(
            "createdAt", TIMESTAMP_MS, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="CreditTransaction_pkey"),
    )
    op.create_table(
        "MAACExperiment",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column(
            "createdAt", TIMESTAMP_MS, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column("updatedAt", TIMESTAMP_MS, nullable=False),
        sa.Column("userId", sa.Text(), nullable=True),
        sa.Column("apiKeyMode", sa.Text(), server_default="system", nullable=False),
        sa.Column("creditsUsed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("estimatedCredits", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="MAACExperiment_pkey"),
    )
    op.create_index("User_email_key", "User", ["email"], unique=True)
    op.create_index("User_email_idx", "User", ["email"])
    op.create_index(
        "CreditTransaction_userId_createdAt_idx", "CreditTransaction", ["userId", "createdAt"]
    )
    op.create_index("CreditTransaction_type_idx", "CreditTransaction", ["type"])
    op.create_foreign_key(
        "CreditTransaction_userId_fkey",
        "CreditTransaction",
        "User",
        ["userId"],
        ["id"],
        onupdate="CASCADE",
        ondelete="CASCADE",
    )
    op.create_foreign_key(
        "MAACExperiment_userId_fkey",
        "MAACExperiment",
        "User",
        ["userId"],
        ["id"],
        onupdate="CASCADE",
        ondelete="SET NULL",
    )


def downgrade() -> None:
    op.drop_table("MAACExperiment")
    op.drop_table("CreditTransaction")
    op.drop_table("User")
    TRANSACTION_TYPE.drop(op.get_bind())
