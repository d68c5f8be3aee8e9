"""Proof, for reconcile, that every grant's credits are accounted for.

For each grant: its ADJUSTMENT grants `amount`; `remaining = amount - SUM(draws) - expired`,
where `expired` is minus the amount of its `expiry:<id>` ADJUSTMENT (none while unexpired);
once expired, `remaining` is 0, so the expiry removed exactly what was left. And each USAGE
row drew no more than it charged, only from its own user's grants.
"""

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_GRANTS_UNACCOUNTED = text(
    """
    SELECT g.id, g.amount, g.remaining, g."expiredAt" IS NOT NULL AS expired,
           t.amount AS granted, COALESCE(d.drawn, 0) AS drawn, -COALESCE(x.amount, 0) AS removed,
           x.id IS NOT NULL AS has_expiry
    FROM "CreditGrant" g
    JOIN "CreditTransaction" t ON t.id = g.id
    LEFT JOIN (SELECT "grantId", SUM(amount) AS drawn FROM "GrantDraw" GROUP BY "grantId") d
        ON d."grantId" = g.id
    LEFT JOIN "CreditTransaction" x ON x."idempotencyKey" = 'expiry:' || g.id
    WHERE t.amount <> g.amount OR t.type <> 'ADJUSTMENT' OR t."userId" <> g."userId"
       OR g.remaining <> g.amount - COALESCE(d.drawn, 0) + COALESCE(x.amount, 0)
       OR g.remaining < 0
       OR (g."expiredAt" IS NOT NULL AND g.remaining <> 0)
       OR (g."expiredAt" IS NULL AND x.id IS NOT NULL)
    ORDER BY g.id
    """
)

_DRAWS_UNACCOUNTED = text(
    """
    SELECT t.id, -t.amount AS charged, SUM(d.amount) AS drawn,
           bool_or(g."userId" <> t."userId" OR t.type <> 'USAGE' OR d.amount <= 0) AS misplaced
    FROM "GrantDraw" d
    JOIN "CreditTransaction" t ON t.id = d."transactionId"
    JOIN "CreditGrant" g ON g.id = d."grantId"
    GROUP BY t.id, t.amount
    HAVING SUM(d.amount) > -t.amount
        OR bool_or(g."userId" <> t."userId" OR t.type <> 'USAGE' OR d.amount <= 0)
    ORDER BY t.id
    """
)


@dataclass(frozen=True)
class GrantViolation:
    """A grant (or a USAGE row's draws) whose credits do not add up."""

    subject_id: str
    recorded: int
    expected: int
    detail: str


async def grant_violations(session: AsyncSession) -> list[GrantViolation]:
    violations = []
    for row in await session.execute(_GRANTS_UNACCOUNTED):
        expected = row.amount - row.drawn - row.removed
        detail = (
            f"grant of {row.amount} credits (its ADJUSTMENT {row.granted}) has {row.remaining} "
            f"left, but {row.drawn} were drawn and {row.removed} expired"
        )
        if row.expired and row.remaining:
            detail += "; it is expired, so nothing should be left"
        elif not row.expired and row.has_expiry:
            detail += "; it is not expired, yet its expiry is posted"
        violations.append(GrantViolation(row.id, row.remaining, int(expected), detail))
    for row in await session.execute(_DRAWS_UNACCOUNTED):
        detail = f"USAGE row charged {row.charged} credits and drew {row.drawn} from grants" + (
            " (a draw of another user's grant, or not a USAGE row)" if row.misplaced else ""
        )
        violations.append(GrantViolation(row.id, int(row.drawn), int(row.charged), detail))
    return violations
