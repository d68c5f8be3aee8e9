"""ArchivedUsage: what each archive run removed from UsageCall, per experiment and owner.

`metering calls archive` deletes call records older than the exactly-once window; in the same
transaction it adds their sums here, so that reconcile still proves `creditsUsed` and the exact
cost of each experiment from its call records, archived or not.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP_MS = postgresql.TIMESTAMP(precision=3)


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("ArchivedUsage"):
        return  # Prisma's migration of our additions made it
    op.create_table(
        "ArchivedUsage",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("experimentId", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=True),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("exactCredits", sa.Numeric(38, 18), nullable=False),
        sa.Column("inputTokens", sa.BigInteger(), nullable=False),
        sa.Column("outputTokens", sa.BigInteger(), nullable=False),
        sa.Column(
            "archivedAt", TIMESTAMP_MS, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="ArchivedUsage_pkey"),
    )
    op.create_index("ArchivedUsage_experimentId_idx", "ArchivedUsage", ["experimentId"])


def downgrade() -> None:
    op.drop_table("ArchivedUsage")
