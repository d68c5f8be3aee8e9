"""Stripe: a record of each Checkout session metering creates, and each event's payment.

- StripeCheckoutSession: the sessions metering created; only these are credited, and only
  with the credits, amount and currency recorded;
- StripeEvent.paymentIntent (indexed), filled in for the events already stored: the events of one
  payment are read together to work out what its refunds and disputes claw back.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP_MS = postgresql.TIMESTAMP(precision=3)


def _created_by_prisma() -> bool:
    """Prisma's migration of our additions (prisma/migrations/) made this revision's schema."""
    return sa.inspect(op.get_bind()).has_table("StripeCheckoutSession")


def upgrade() -> None:
    prisma_made = _created_by_prisma()
    if not prisma_made:
        op.add_column("StripeEvent", sa.Column("paymentIntent", sa.Text(), nullable=True))
    # A reference Stripe sent expanded is an object holding the id.
    op.execute(
        """
        UPDATE "StripeEvent" SET "paymentIntent" = COALESCE(
            payload->'data'->'object'->'payment_intent'->>'id',
            payload->'data'->'object'->>'payment_intent')
        WHERE jsonb_typeof(payload->'data'->'object'->'payment_intent') IN ('string', 'object')
        """
    )
    if prisma_made:
        return
    op.create_index("StripeEvent_paymentIntent_idx", "StripeEvent", ["paymentIntent"])

    op.create_table(
        "StripeCheckoutSession",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("amountCents", sa.Integer(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column(
            "createdAt", TIMESTAMP_MS, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="StripeCheckoutSession_pkey"),
    )
    op.create_index("StripeCheckoutSession_userId_idx", "StripeCheckoutSession", ["userId"])


def downgrade() -> None:
    op.drop_table("StripeCheckoutSession")
    op.drop_index("StripeEvent_paymentIntent_idx", table_name="StripeEvent")
    op.drop_column("StripeEvent", "paymentIntent")
