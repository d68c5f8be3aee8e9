"""One key space per kind of posting, and a call record per charged call.

- CreditTransaction.idempotencyKey becomes `<kind>:<key>` (usage, purchase, clawback, operator:
  the rule of `ledger.key_kind`), so keys of different kinds can never collide; rows without a
  key keep none;
- UsageCall: one typed record per recorded LLM call, keyed by its event id, with no foreign key,
  so a redelivered event is a duplicate whatever the platform deleted since. Filled here from
  every USAGE row of an experiment and every UnbilledUsage row written before, so an old event
  redelivered after the upgrade is still a duplicate.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP_MS = postgresql.TIMESTAMP(precision=3)
KEY_INDEX = "CreditTransaction_idempotencyKey_key"
KINDS = ("usage", "purchase", "clawback", "operator")

_KIND = (
    "CASE WHEN type = 'USAGE' THEN 'usage' WHEN type = 'PURCHASE' THEN 'purchase' "
    """WHEN "stripePaymentId" IS NOT NULL THEN 'clawback' ELSE 'operator' END"""
)


def _token(name: str) -> str:
    """A token count from a row's metadata; 0 where the row has none (rows of other writers)."""
    return (
        f"CASE WHEN jsonb_typeof(metadata->'{name}') = 'number' "
        f"AND metadata->>'{name}' ~ '^[0-9]{{1,9}}$' THEN (metadata->>'{name}')::int ELSE 0 END"
    )


def _text(name: str, default: str) -> str:
    return f"COALESCE(metadata->>'{name}', '{default}')"


# What a row's metadata says of its call; rows without it get neutral values (their cost is
# then their charged credits, their time the row's).
_CALL_FACTS = ", ".join(
    [
        _text("provider", "unknown"),
        _text("model", "unknown"),
        _text("tier", "standard"),
        _token("inputTokens"),
        _token("outputTokens"),
        _token("cachedInputTokens"),
        _token("cacheWriteTokens"),
        _token("reasoningTokens"),
        "CASE WHEN metadata->>'exactCredits' ~ '^[0-9]{1,20}(\\.[0-9]+)?(E[-+]?[0-9]{1,2})?$' "
        "THEN (metadata->>'exactCredits')::numeric ELSE -amount END",
        "-amount",
        "CASE WHEN metadata->>'occurredAt' ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T' "
        """THEN ((metadata->>'occurredAt')::timestamptz AT TIME ZONE 'UTC') ELSE "createdAt" END""",
        _text("catalogVersion", "unknown"),
        "{digest}",
        '"createdAt"',
    ]
)
_HEX_DIGEST = "metadata->>'payloadDigest'"
_BYTE_DIGEST = (
    "CASE WHEN metadata->>'payloadDigest' ~ '^[0-9a-f]{32}' "
    "THEN decode(left(metadata->>'payloadDigest', 32), 'hex') END"
)
"""The digest as 0005 keeps it: a database whose Prisma migrations are all applied already has
that column type when this revision runs."""


def _digest_expression() -> str:
    columns = sa.inspect(op.get_bind()).get_columns("UsageCall")
    digest = next(c for c in columns if c["name"] == "payloadDigest")
    return _BYTE_DIGEST if isinstance(digest["type"], sa.LargeBinary) else _HEX_DIGEST


_CALL_COLUMNS = (
    '"eventId", "experimentId", "userId", provider, model, tier, "inputTokens", "outputTokens", '
    '"cachedInputTokens", "cacheWriteTokens", "reasoningTokens", "exactCredits", credits, '
    '"occurredAt", "catalogVersion", "payloadDigest", "createdAt"'
)


def _created_by_prisma() -> bool:
    """Prisma's migration of our additions (prisma/migrations/) made the table; keys still move."""
    return sa.inspect(op.get_bind()).has_table("UsageCall")


def upgrade() -> None:
    if not _created_by_prisma():
        _create_call_records()
    facts = _CALL_FACTS.replace("{digest}", _digest_expression())
    # Before the keys change: a USAGE row's key is still its event id here.
    op.execute(
        f'INSERT INTO "UsageCall" ({_CALL_COLUMNS}) '
        f'SELECT "idempotencyKey", "experimentId", "userId", {facts} '
        'FROM "CreditTransaction" WHERE type = \'USAGE\' AND "experimentId" IS NOT NULL '
        'AND "idempotencyKey" IS NOT NULL ON CONFLICT ("eventId") DO NOTHING'
    )
    op.execute(
        f'INSERT INTO "UsageCall" ({_CALL_COLUMNS}) '
        f'SELECT "eventId", "experimentId", NULL, {facts} FROM "UnbilledUsage" '
        # An event recorded in both tables is a violation reconcile reports; keep the first.
        'ON CONFLICT ("eventId") DO NOTHING'
    )

    # Without the unique index while keys move, so that no intermediate state can collide.
    op.drop_index(KEY_INDEX, table_name="CreditTransaction")
    op.execute(
        f'UPDATE "CreditTransaction" SET "idempotencyKey" = {_KIND} || \':\' || "idempotencyKey" '
        'WHERE "idempotencyKey" IS NOT NULL'
    )
    op.create_index(KEY_INDEX, "CreditTransaction", ["idempotencyKey"], unique=True)


def _create_call_records() -> None:
    op.create_table(
        "UsageCall",
        sa.Column("eventId", sa.Text(), nullable=False),
        sa.Column("experimentId", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=True),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("tier", sa.Text(), nullable=False),
        sa.Column("inputTokens", sa.Integer(), nullable=False),
        sa.Column("outputTokens", sa.Integer(), nullable=False),
        sa.Column("cachedInputTokens", sa.Integer(), nullable=False),
        sa.Column("cacheWriteTokens", sa.Integer(), nullable=False),
        sa.Column("reasoningTokens", sa.Integer(), nullable=False),
        sa.Column("exactCredits", sa.Numeric(precision=38, scale=18), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("occurredAt", TIMESTAMP_MS, nullable=False),
        sa.Column("catalogVersion", sa.Text(), nullable=False),
        sa.Column("payloadDigest", sa.Text(), nullable=True),
        sa.Column(
            "createdAt", TIMESTAMP_MS, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.PrimaryKeyConstraint("eventId", name="UsageCall_pkey"),
    )
    op.create_index("UsageCall_experimentId_idx", "UsageCall", ["experimentId"])


def downgrade() -> None:
    prefixed = f"\"idempotencyKey\" ~ '^({'|'.join(KINDS)}):'"
    bare = 'substring("idempotencyKey" from position(\':\' in "idempotencyKey") + 1)'
    collisions = (
        op.get_bind()
        .execute(
            sa.text(
                f'SELECT {bare} AS key FROM "CreditTransaction" WHERE {prefixed} '
                "GROUP BY 1 HAVING count(*) > 1 ORDER BY 1 LIMIT 5"
            )
        )
        .scalars()
        .all()
    )
    if collisions:
        raise RuntimeError(
            "cannot go below 0003: keys of different kinds would collide without their "
            f"kind prefix: {', '.join(collisions)}"
        )
    op.drop_index(KEY_INDEX, table_name="CreditTransaction")
    op.execute(f'UPDATE "CreditTransaction" SET "idempotencyKey" = {bare} WHERE {prefixed}')
    op.create_index(KEY_INDEX, "CreditTransaction", ["idempotencyKey"], unique=True)
    op.drop_table("UsageCall")
