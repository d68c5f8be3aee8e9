"""Proof that the ledger's invariants hold, row for row."""

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_USER_VIOLATIONS = text(
    """
    SELECT u.id, u.email, u.credits AS recorded, COALESCE(t.total, 0) AS expected
    FROM "User" u
    LEFT JOIN (
        SELECT "userId", SUM(amount) AS total FROM "CreditTransaction" GROUP BY "userId"
    ) t ON t."userId" = u.id
    WHERE u.credits <> COALESCE(t.total, 0)
    ORDER BY u.id
    """
)

_EXPERIMENT_VIOLATIONS = text(
    """
    SELECT e.id, e."creditsUsed" AS recorded,
           -(COALESCE(t.total, 0) + COALESCE(n.total, 0)) AS expected,
           e."exactCreditsUsed" AS exact, CEIL(e."exactCreditsUsed") AS exact_ceiling
    FROM "MAACExperiment" e
    LEFT JOIN (
        SELECT "experimentId", SUM(amount) AS total FROM "CreditTransaction"
        WHERE type = 'USAGE' GROUP BY "experimentId"
    ) t ON t."experimentId" = e.id
    LEFT JOIN (
        SELECT "experimentId", SUM(amount) AS total FROM "UnbilledUsage" GROUP BY "experimentId"
    ) n ON n."experimentId" = e.id
    WHERE e."creditsUsed" <> -(COALESCE(t.total, 0) + COALESCE(n.total, 0))
       OR e."creditsUsed" <> CEIL(e."exactCreditsUsed")
    ORDER BY e.id
    """
)


_SIGN_VIOLATIONS = text(
    """
    SELECT id, type::text AS type, amount FROM "CreditTransaction"
    WHERE (type IN ('PURCHASE', 'REFUND') AND amount <= 0)
       OR (type = 'USAGE' AND amount > 0)
       OR (type = 'ADJUSTMENT' AND amount = 0)
    UNION ALL
    SELECT "eventId", 'UNBILLED', amount FROM "UnbilledUsage" WHERE amount > 0
    ORDER BY id
    """
)

_EVENTS_RECORDED_TWICE = text(
    """
    SELECT n."eventId" AS id FROM "UnbilledUsage" n
    JOIN "CreditTransaction" t ON t."idempotencyKey" = n."eventId"
    ORDER BY n."eventId"
    """
)


@dataclass(frozen=True)
class Violation:
    """One broken invariant: what was recorded against what the ledger rows say."""

    kind: str
    subject_id: str
    recorded: int
    expected: int
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.subject_id}: {self.detail}"


async def find_violations(session: AsyncSession) -> list[Violation]:
    """Every broken invariant: a user whose credits differ from SUM(amount); an experiment whose
    creditsUsed differs from -SUM(its usage amounts) or from the ceiling of its exact cost; a row
    whose amount has the wrong sign for its type; an event recorded both as USAGE and unbilled."""
    violations = []
    for row in await session.execute(_USER_VIOLATIONS):
        violations.append(
            Violation(
                "user",
                row.id,
                row.recorded,
                int(row.expected),
                f"credits = {row.recorded} but its transactions sum to {row.expected} "
                f"({row.email})",
            )
        )
    for row in await session.execute(_EXPERIMENT_VIOLATIONS):
        if row.recorded != row.expected:
            detail = f"creditsUsed = {row.recorded} but its usage sums to {row.expected}"
        else:
            detail = (
                f"creditsUsed = {row.recorded} but its exact cost {row.exact} "
                f"rounds up to {row.exact_ceiling}"
            )
        violations.append(Violation("experiment", row.id, row.recorded, int(row.expected), detail))
    for row in await session.execute(_SIGN_VIOLATIONS):
        detail = f"{row.type} amount {row.amount} has the wrong sign for its type"
        violations.append(Violation("transaction", row.id, row.amount, row.amount, detail))
    for row in await session.execute(_EVENTS_RECORDED_TWICE):
        detail = "recorded both as a USAGE row and as unbilled usage"
        violations.append(Violation("event", row.id, 2, 1, detail))
    return violations
