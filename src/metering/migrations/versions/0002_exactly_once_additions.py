"""Our additions for exactly-once billing (mirrored as Prisma lines in docs/schema.md).

- CreditTransaction.idempotencyKey (unique) and experimentId, and an index on stripePaymentId;
- MAACExperiment.exactCreditsUsed, the exact fractional credits behind creditsUsed;
- UnbilledUsage: usage of experiments without a user, recorded once per event;
- StripeEvent: every Stripe webhook event received, processed exactly once.

On a database where the platform's Prisma already applied the same additions (our Prisma
migration in prisma/migrations/, in one transaction), this revision changes nothing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP_MS = postgresql.TIMESTAMP(precision=3)
JSONB = postgresql.JSONB(astext_type=sa.Text())


def _created_by_prisma() -> bool:
    return sa.inspect(op.get_bind()).has_table("StripeEvent")


def upgrade() -> None:
    if _created_by_prisma():
        return
    op.add_column("CreditTransaction", sa.Column("idempotencyKey", sa.Text(), nullable=True))
    op.add_column("CreditTransaction", sa.Column("experimentId", sa.Text(), nullable=True))
    op.create_index(
        "CreditTransaction_idempotencyKey_key", "CreditTransaction", ["idempotencyKey"], unique=True
    )
    op.create_index("CreditTransaction_experimentId_idx", "CreditTransaction", ["experimentId"])
    op.create_index(
        "CreditTransaction_stripePaymentId_idx", "CreditTransaction", ["stripePaymentId"]
    )

    op.add_column(
        "MAACExperiment",
        sa.Column(
            "exactCreditsUsed",
            sa.Numeric(precision=38, scale=18),
            server_default="0",
            nullable=False,
        ),
    )
    op.create_index("MAACExperiment_userId_idx", "MAACExperiment", ["userId"])

    op.create_table(
        "UnbilledUsage",
        sa.Column("eventId", sa.Text(), nullable=False),
        sa.Column("experimentId", sa.Text(), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("metadata", JSONB, nullable=True),
        sa.Column(
            "createdAt", TIMESTAMP_MS, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.PrimaryKeyConstraint("eventId", name="UnbilledUsage_pkey"),
        sa.ForeignKeyConstraint(
            ["experimentId"],
            ["MAACExperiment.id"],
            name="UnbilledUsage_experimentId_fkey",
            onupdate="CASCADE",
            ondelete="CASCADE",
        ),
    )
    op.create_index("UnbilledUsage_experimentId_idx", "UnbilledUsage", ["experimentId"])

    op.create_table(
        "StripeEvent",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column(
            "receivedAt", TIMESTAMP_MS, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column("processedAt", TIMESTAMP_MS, nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lastError", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="StripeEvent_pkey"),
    )
    op.create_index(
        "StripeEvent_processedAt_receivedAt_idx", "StripeEvent", ["processedAt", "receivedAt"]
    )


def downgrade() -> None:
    op.drop_table("StripeEvent")
    op.drop_table("UnbilledUsage")
    op.drop_index("MAACExperiment_userId_idx", table_name="MAACExperiment")
    op.drop_column("MAACExperiment", "exactCreditsUsed")
    op.drop_index("CreditTransaction_stripePaymentId_idx", table_name="CreditTransaction")
    op.drop_index("CreditTransaction_experimentId_idx", table_name="CreditTransaction")
    op.drop_index("CreditTransaction_idempotencyKey_key", table_name="CreditTransaction")
    op.drop_column("CreditTransaction", "experimentId")
    op.drop_column("CreditTransaction", "idempotencyKey")
