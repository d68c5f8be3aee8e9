"""Call records hold the usage; USAGE rows sum them.

- UsageCall.metadata: the producer's free-form metadata of the call (NULL when it sent none),
  which per-call USAGE rows used to keep;
- UsageCall.payloadDigest: the first 16 bytes of the event's SHA-256 (BYTEA), instead of its 64
  hex characters: 48 bytes less per call.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _created_by_prisma() -> bool:
    """Prisma's migration of this change (prisma/migrations/) was applied already."""
    columns = sa.inspect(op.get_bind()).get_columns("UsageCall")
    return any(column["name"] == "metadata" for column in columns)


def upgrade() -> None:
    if _created_by_prisma():
        return
    op.add_column("UsageCall", sa.Column("metadata", postgresql.JSONB(), nullable=True))
    op.execute(
        'ALTER TABLE "UsageCall" ALTER COLUMN "payloadDigest" TYPE BYTEA USING CASE '
        "WHEN \"payloadDigest\" ~ '^[0-9a-f]{32}' THEN decode(left(\"payloadDigest\", 32), 'hex') "
        "END"
    )


def downgrade() -> None:
    op.execute(
        'ALTER TABLE "UsageCall" ALTER COLUMN "payloadDigest" TYPE TEXT '
        "USING encode(\"payloadDigest\", 'hex')"
    )
    op.drop_column("UsageCall", "metadata")
