"""ORM models: exactly the tables Prisma creates from the platform's schema, plus our additions.

Table, column, enum, index and constraint names follow Prisma's conventions because the platform's
Node API reads and writes the same tables. Columns and tables marked "ours" are additions,
mirrored in docs/schema.md as Prisma lines. Credits are integers (1 credit = $0.001); exact
fractional credits are NUMERIC(38, 18).
"""

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from metering.ops.ids import cuid

TIMESTAMP_MS = TIMESTAMP(precision=3)
"""Prisma's `DateTime`: TIMESTAMP(3) without time zone, holding UTC."""
EXACT_CREDITS = Numeric(38, 18)
"""Exact fractional credits (1 credit = $0.001), e.g. an experiment's running cost."""


class Base(DeclarativeBase):
    """Declarative base; keys, indexes and constraints carry the names Prisma gives them."""

    metadata = MetaData(naming_convention={"pk": "%(table_name)s_pkey"})


class TransactionType(enum.StrEnum):
    """Prisma enum `TransactionType`; the sign of `amount` is fixed per type (see ledger)."""

    PURCHASE = "PURCHASE"
    USAGE = "USAGE"
    REFUND = "REFUND"
    ADJUSTMENT = "ADJUSTMENT"


def _id() -> Mapped[str]:
    return mapped_column("id", Text, primary_key=True, default=cuid)


def _created_at() -> Mapped[datetime]:
    return mapped_column(
        "createdAt", TIMESTAMP_MS, nullable=False, server_default=text("CURRENT_TIMESTAMP")
    )


def _updated_at() -> Mapped[datetime]:
    # Prisma's @updatedAt has no database default: the client sets it on every write, as we do.
    return mapped_column(
        "updatedAt", TIMESTAMP_MS, nullable=False, default=func.now(), onupdate=func.now()
    )


class User(Base):
    """A platform user; `credits` is the balance and always equals the sum of its transactions."""

    __tablename__ = "User"
    __table_args__ = (
        Index("User_email_key", "email", unique=True),
        Index("User_email_idx", "email"),
    )

    id: Mapped[str] = _id()
    email: Mapped[str] = mapped_column("email", Text, nullable=False)
    name: Mapped[str | None] = mapped_column("name", Text)
    credits: Mapped[int] = mapped_column("credits", Integer, nullable=False, server_default="0")
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class CreditTransaction(Base):
    """One append-only ledger row. Rows are never updated: corrections are new rows.

    `amount` is in credits: PURCHASE and REFUND > 0, USAGE <= 0, ADJUSTMENT != 0.
    Ours: `idempotencyKey` (unique, `<kind>:<key>` in the key space of its kind: `usage:` the
    event id, `purchase:` the Checkout session id, `clawback:` the Stripe refund state or dispute
    id, `operator:` the operator's key; see `ledger.key_kind`) and `experimentId` (the experiment
    a USAGE or REFUND row belongs to, also kept in `metadata.experimentId` for the platform).
    """

    __tablename__ = "CreditTransaction"
    __table_args__ = (
        Index("CreditTransaction_userId_createdAt_idx", "userId", "createdAt"),
        Index("CreditTransaction_type_idx", "type"),
        Index("CreditTransaction_idempotencyKey_key", "idempotencyKey", unique=True),
        Index("CreditTransaction_experimentId_idx", "experimentId"),
        Index("CreditTransaction_stripePaymentId_idx", "stripePaymentId"),
    )

    id: Mapped[str] = _id()
    user_id: Mapped[str] = mapped_column(
        "userId",
        Text,
        ForeignKey(
            "User.id",
            name="CreditTransaction_userId_fkey",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        nullable=False,
    )
    type: Mapped[TransactionType] = mapped_column(
        "type",
        Enum(
            TransactionType, name="TransactionType", values_callable=lambda e: [m.value for m in e]
        ),
        nullable=False,
    )
    amount: Mapped[int] = mapped_column("amount", Integer, nullable=False)
    description: Mapped[str] = mapped_column("description", Text, nullable=False)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)
    stripe_payment_id: Mapped[str | None] = mapped_column("stripePaymentId", Text)
    stripe_checkout_id: Mapped[str | None] = mapped_column("stripeCheckoutId", Text)
    created_at: Mapped[datetime] = _created_at()
    idempotency_key: Mapped[str | None] = mapped_column("idempotencyKey", Text)
    experiment_id: Mapped[str | None] = mapped_column("experimentId", Text)


class MAACExperiment(Base):
    """An experiment of the platform. Billing fields come from the platform's schema.

    `name`, `status`, `createdAt` and `updatedAt` stand in for the platform's existing fields.
    Ours: `exactCreditsUsed`, the exact fractional credits of all its usage; `creditsUsed` is always
    its ceiling (the carry rule in docs/pricing.md).
    """

    __tablename__ = "MAACExperiment"
    __table_args__ = (Index("MAACExperiment_userId_idx", "userId"),)

    id: Mapped[str] = _id()
    name: Mapped[str] = mapped_column("name", Text, nullable=False)
    status: Mapped[str] = mapped_column("status", Text, nullable=False, server_default="pending")
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()
    user_id: Mapped[str | None] = mapped_column(
        "userId",
        Text,
        ForeignKey(
            "User.id",
            name="MAACExperiment_userId_fkey",
            ondelete="SET NULL",
            onupdate="CASCADE",
        ),
    )
    api_key_mode: Mapped[str] = mapped_column(
        "apiKeyMode", Text, nullable=False, server_default="system"
    )
    credits_used: Mapped[int] = mapped_column(
        "creditsUsed", Integer, nullable=False, server_default="0"
    )
    estimated_credits: Mapped[int | None] = mapped_column("estimatedCredits", Integer)
    exact_credits_used: Mapped[Decimal] = mapped_column(
        "exactCreditsUsed", EXACT_CREDITS, nullable=False, server_default="0"
    )


class UnbilledUsage(Base):
    """Ours. Usage of an experiment that has no user: counted in `creditsUsed`, charged to nobody.

    Keyed by the event id, so such an event is recorded exactly once like a USAGE row.
    `amount` is in credits and <= 0, as a USAGE row's would be.
    """

    __tablename__ = "UnbilledUsage"
    __table_args__ = (Index("UnbilledUsage_experimentId_idx", "experimentId"),)

    event_id: Mapped[str] = mapped_column("eventId", Text, primary_key=True)
    experiment_id: Mapped[str] = mapped_column(
        "experimentId",
        Text,
        ForeignKey(
            "MAACExperiment.id",
            name="UnbilledUsage_experimentId_fkey",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        nullable=False,
    )
    amount: Mapped[int] = mapped_column("amount", Integer, nullable=False)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)
    created_at: Mapped[datetime] = _created_at()


class UsageCall(Base):
    """Ours. One typed record per recorded LLM call: the durable exactly-once memory of usage.

    Keyed by the event id; written in the same transaction as the USAGE row that sums it with the
    batch's other calls of its experiment, provider, model and tier (or the UnbilledUsage row:
    `userId` is then NULL). Reports read usage from here. No foreign key: it outlives the platform's
    deletion of the user (whose transactions cascade away) and of the experiment, so an event id
    once recorded is never counted again. `userId` is the owner charged; `exactCredits` the
    call's exact cost, recomputable from the token counts, tier, `occurredAt` and
    `catalogVersion`; `credits` the whole credits it was charged (>= 0: its share of its USAGE
    row's amount); `metadata` the producer's free-form metadata, if any.
    """

    __tablename__ = "UsageCall"
    __table_args__ = (
        Index("UsageCall_experimentId_idx", "experimentId"),
        Index("UsageCall_userId_idx", "userId"),
    )

    event_id: Mapped[str] = mapped_column("eventId", Text, primary_key=True)
    experiment_id: Mapped[str] = mapped_column("experimentId", Text, nullable=False)
    user_id: Mapped[str | None] = mapped_column("userId", Text)
    provider: Mapped[str] = mapped_column("provider", Text, nullable=False)
    model: Mapped[str] = mapped_column("model", Text, nullable=False)
    tier: Mapped[str] = mapped_column("tier", Text, nullable=False)
    input_tokens: Mapped[int] = mapped_column("inputTokens", Integer, nullable=False)
    output_tokens: Mapped[int] = mapped_column("outputTokens", Integer, nullable=False)
    cached_input_tokens: Mapped[int] = mapped_column("cachedInputTokens", Integer, nullable=False)
    cache_write_tokens: Mapped[int] = mapped_column("cacheWriteTokens", Integer, nullable=False)
    reasoning_tokens: Mapped[int] = mapped_column("reasoningTokens", Integer, nullable=False)
    exact_credits: Mapped[Decimal] = mapped_column("exactCredits", EXACT_CREDITS, nullable=False)
    credits: Mapped[int] = mapped_column("credits", Integer, nullable=False)
    occurred_at: Mapped[datetime] = mapped_column("occurredAt", TIMESTAMP_MS, nullable=False)
    catalog_version: Mapped[str] = mapped_column("catalogVersion", Text, nullable=False)
    payload_digest: Mapped[bytes | None] = mapped_column("payloadDigest", LargeBinary)
    created_at: Mapped[datetime] = _created_at()
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)


class ArchivedUsage(Base):
    """Ours. What one archive run removed from `UsageCall`, summed per experiment and owner.

    Written in the transaction that deletes the call records, so reconcile proves an
    experiment's usage from its call records and its archived sums together.
    """

    __tablename__ = "ArchivedUsage"
    __table_args__ = (Index("ArchivedUsage_experimentId_idx", "experimentId"),)

    id: Mapped[str] = mapped_column("id", Text, primary_key=True, default=cuid)
    experiment_id: Mapped[str] = mapped_column("experimentId", Text, nullable=False)
    user_id: Mapped[str | None] = mapped_column("userId", Text)
    calls: Mapped[int] = mapped_column("calls", Integer, nullable=False)
    credits: Mapped[int] = mapped_column("credits", Integer, nullable=False)
    exact_credits: Mapped[Decimal] = mapped_column("exactCredits", EXACT_CREDITS, nullable=False)
    input_tokens: Mapped[int] = mapped_column("inputTokens", BigInteger, nullable=False)
    output_tokens: Mapped[int] = mapped_column("outputTokens", BigInteger, nullable=False)
    archived_at: Mapped[datetime] = mapped_column(
        "archivedAt", TIMESTAMP_MS, server_default=text("CURRENT_TIMESTAMP"), nullable=False
    )


class StripeEvent(Base):
    """Ours. Every Stripe webhook event received, stored raw before it is processed.

    Keyed by Stripe's event id, so a repeated delivery stores nothing new. `processedAt` is set
    once its handler has committed; `attempts` and `lastError` show failures to operators.
    `paymentIntent` is the payment the event's object belongs to (copied from the payload when
    stored), so the events of one payment are found without reading every payload.
    """

    __tablename__ = "StripeEvent"
    __table_args__ = (
        Index("StripeEvent_processedAt_receivedAt_idx", "processedAt", "receivedAt"),
        Index("StripeEvent_paymentIntent_idx", "paymentIntent"),
    )

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    type: Mapped[str] = mapped_column("type", Text, nullable=False)
    livemode: Mapped[bool] = mapped_column("livemode", Boolean, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column("payload", JSONB, nullable=False)
    received_at: Mapped[datetime] = mapped_column(
        "receivedAt", TIMESTAMP_MS, nullable=False, server_default=text("CURRENT_TIMESTAMP")
    )
    processed_at: Mapped[datetime | None] = mapped_column("processedAt", TIMESTAMP_MS)
    outcome: Mapped[str | None] = mapped_column("outcome", Text)
    attempts: Mapped[int] = mapped_column("attempts", Integer, nullable=False, server_default="0")
    last_error: Mapped[str | None] = mapped_column("lastError", Text)
    payment_intent: Mapped[str | None] = mapped_column("paymentIntent", Text)


class StripeCheckoutSession(Base):
    """Ours. Every Checkout session metering created, recorded before its url is handed out.

    Only a session recorded here is credited, and only with what was recorded: `credits` for
    `amountCents` (in the smallest unit of `currency`, US cents) to `userId`. No foreign key on
    `userId`: a session of a deleted user must still be recognised as ours (and then fail loudly).
    """

    __tablename__ = "StripeCheckoutSession"
    __table_args__ = (Index("StripeCheckoutSession_userId_idx", "userId"),)

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    user_id: Mapped[str] = mapped_column("userId", Text, nullable=False)
    credits: Mapped[int] = mapped_column("credits", Integer, nullable=False)
    amount_cents: Mapped[int] = mapped_column("amountCents", Integer, nullable=False)
    currency: Mapped[str] = mapped_column("currency", Text, nullable=False)
    created_at: Mapped[datetime] = _created_at()


class CreditGrant(Base):
    """Ours. Credits that expire (a promotion, a trial): the positive ADJUSTMENT whose id it has.

    `amount` and `remaining` are in credits; usage draws `remaining` down (`GrantDraw`), higher
    `priority` first, then the earliest `expiresAt`. At expiry one negative ADJUSTMENT (key
    `expiry:<id>`) removes what is left, `remaining` becomes 0 and `expiredAt` is set.
    """

    __tablename__ = "CreditGrant"
    __table_args__ = (
        Index("CreditGrant_userId_idx", "userId"),
        Index("CreditGrant_expiredAt_expiresAt_idx", "expiredAt", "expiresAt"),
    )

    id: Mapped[str] = mapped_column(
        "id",
        Text,
        ForeignKey(
            "CreditTransaction.id",
            name="CreditGrant_id_fkey",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        primary_key=True,
    )
    user_id: Mapped[str] = mapped_column("userId", Text, nullable=False)
    amount: Mapped[int] = mapped_column("amount", Integer, nullable=False)
    remaining: Mapped[int] = mapped_column("remaining", Integer, nullable=False)
    priority: Mapped[int] = mapped_column("priority", Integer, nullable=False, server_default="0")
    expires_at: Mapped[datetime] = mapped_column("expiresAt", TIMESTAMP_MS, nullable=False)
    expired_at: Mapped[datetime | None] = mapped_column("expiredAt", TIMESTAMP_MS)
    reason: Mapped[str] = mapped_column("reason", Text, nullable=False)
    source: Mapped[str] = mapped_column("source", Text, nullable=False)
    created_at: Mapped[datetime] = _created_at()


class GrantDraw(Base):
    """Ours. What one USAGE row drew from one grant: `amount` credits (> 0)."""

    __tablename__ = "GrantDraw"
    __table_args__ = (Index("GrantDraw_transactionId_idx", "transactionId"),)

    grant_id: Mapped[str] = mapped_column(
        "grantId",
        Text,
        ForeignKey(
            "CreditGrant.id", name="GrantDraw_grantId_fkey", ondelete="CASCADE", onupdate="CASCADE"
        ),
        primary_key=True,
    )
    transaction_id: Mapped[str] = mapped_column(
        "transactionId",
        Text,
        ForeignKey(
            "CreditTransaction.id",
            name="GrantDraw_transactionId_fkey",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        primary_key=True,
    )
    amount: Mapped[int] = mapped_column("amount", Integer, nullable=False)
