"""Proof that the ledger's invariants hold, row for row, and what the platform deleted.

The platform may delete a user (its transactions cascade away, its experiments keep their
`creditsUsed`) or an experiment. The call records (`UsageCall`, and the sums of those archived,
`ArchivedUsage`) outlive both, so such deletes are
told apart from violations: an experiment's usage charged to a user deleted since is counted from
its call records, and every delete is reported on its own (`find_deletions`), not as a violation.
"""

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.grants.audit import grant_violations

_CALLS = """(
        SELECT "experimentId", "userId", 1 AS calls, credits, "exactCredits", "inputTokens",
               "outputTokens"
        FROM "UsageCall"
        UNION ALL
        SELECT "experimentId", "userId", calls, credits, "exactCredits", "inputTokens",
               "outputTokens"
        FROM "ArchivedUsage"
    )"""
"""Every recorded call: the call records kept, and the sums of those archived."""

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
    f"""
    SELECT e.id, e."creditsUsed" AS recorded,
           -(COALESCE(t.total, 0) + COALESCE(n.total, 0)) + COALESCE(c.orphaned, 0) AS expected,
           COALESCE(c.orphaned, 0) AS orphaned, COALESCE(c.total, 0) AS calls,
           e."exactCreditsUsed" AS exact, CEIL(e."exactCreditsUsed") AS exact_ceiling,
           COALESCE(c.exact, 0) AS calls_exact
    FROM "MAACExperiment" e
    LEFT JOIN (
        SELECT c."experimentId", SUM(c.credits) AS total, SUM(c."exactCredits") AS exact,
               SUM(c.credits) FILTER (WHERE c."userId" IS NOT NULL AND u.id IS NULL) AS orphaned
        FROM {_CALLS} c LEFT JOIN "User" u ON u.id = c."userId"
        GROUP BY c."experimentId"
    ) c ON c."experimentId" = e.id
    LEFT JOIN (
        SELECT "experimentId", SUM(amount) AS total FROM "CreditTransaction"
        WHERE type = 'USAGE' GROUP BY "experimentId"
    ) t ON t."experimentId" = e.id
    LEFT JOIN (
        SELECT "experimentId", SUM(amount) AS total FROM "UnbilledUsage" GROUP BY "experimentId"
    ) n ON n."experimentId" = e.id
    WHERE e."creditsUsed"
          <> -(COALESCE(t.total, 0) + COALESCE(n.total, 0)) + COALESCE(c.orphaned, 0)
       OR e."creditsUsed" <> COALESCE(c.total, 0)
       OR e."creditsUsed" <> CEIL(e."exactCreditsUsed")
       OR e."exactCreditsUsed" <> COALESCE(c.exact, 0)
    ORDER BY e.id
    """
)


_CALLS_DISAGREE = text(
    f"""
    SELECT e.id, COALESCE(c.calls, 0) AS calls, COALESCE(c.input, 0) AS input,
           COALESCE(c.output, 0) AS output,
           COALESCE(r.calls, 0) + COALESCE(c.orphaned_calls, 0) AS ledger_calls,
           COALESCE(r.input, 0) + COALESCE(c.orphaned_input, 0) AS ledger_input,
           COALESCE(r.output, 0) + COALESCE(c.orphaned_output, 0) AS ledger_output
    FROM "MAACExperiment" e
    LEFT JOIN (
        SELECT c."experimentId", SUM(c.calls) AS calls, SUM(c."inputTokens") AS input,
               SUM(c."outputTokens") AS output,
               SUM(c.calls) FILTER (WHERE c."userId" IS NOT NULL AND u.id IS NULL)
                   AS orphaned_calls,
               SUM(c."inputTokens") FILTER (WHERE c."userId" IS NOT NULL AND u.id IS NULL)
                   AS orphaned_input,
               SUM(c."outputTokens") FILTER (WHERE c."userId" IS NOT NULL AND u.id IS NULL)
                   AS orphaned_output
        FROM {_CALLS} c LEFT JOIN "User" u ON u.id = c."userId"
        GROUP BY c."experimentId"
    ) c ON c."experimentId" = e.id
    LEFT JOIN (
        SELECT "experimentId", SUM(COALESCE((metadata->>'calls')::bigint, 1)) AS calls,
               SUM((metadata->>'inputTokens')::bigint) AS input,
               SUM((metadata->>'outputTokens')::bigint) AS output
        FROM (
            SELECT "experimentId", metadata FROM "CreditTransaction"
            WHERE type = 'USAGE' AND "experimentId" IS NOT NULL
            UNION ALL
            SELECT "experimentId", metadata FROM "UnbilledUsage"
        ) rows
        GROUP BY "experimentId"
    ) r ON r."experimentId" = e.id
    WHERE COALESCE(c.calls, 0) <> COALESCE(r.calls, 0) + COALESCE(c.orphaned_calls, 0)
       OR COALESCE(c.input, 0) <> COALESCE(r.input, 0) + COALESCE(c.orphaned_input, 0)
       OR COALESCE(c.output, 0) <> COALESCE(r.output, 0) + COALESCE(c.orphaned_output, 0)
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
    JOIN "CreditTransaction" t ON t."idempotencyKey" = 'usage:' || n."eventId"
    ORDER BY n."eventId"
    """
)


_OWNERS_DELETED = text(
    f"""
    SELECT c."experimentId" AS experiment_id, c."userId" AS user_id, SUM(c.calls) AS calls,
           SUM(c.credits) AS credits
    FROM {_CALLS} c JOIN "MAACExperiment" e ON e.id = c."experimentId"
    WHERE c."userId" IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "User" u WHERE u.id = c."userId")
    GROUP BY 1, 2 ORDER BY 1, 2
    """
)

_EXPERIMENTS_DELETED = text(
    f"""
    SELECT c."experimentId" AS experiment_id, SUM(c.calls) AS calls, SUM(c.credits) AS credits
    FROM {_CALLS} c
    WHERE NOT EXISTS (SELECT 1 FROM "MAACExperiment" e WHERE e.id = c."experimentId")
    GROUP BY 1 ORDER BY 1
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
    whose amount has the wrong sign for its type; an event recorded both as USAGE and unbilled;
    an experiment whose usage rows (each summing `calls` calls, 1 if it does not say) and call
    records count other calls or tokens; a grant whose remainder is not its amount minus its
    draws and its expiry (`metering.grants.audit`).

    An experiment's usage counts its USAGE and UnbilledUsage rows, and the call records charged to
    users deleted since (whose USAGE rows went with them); it must also equal the sum of all its
    call records, and its exact cost the sum of theirs."""
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
            also = (
                f" ({row.orphaned} of them charged to users deleted since)" if row.orphaned else ""
            )
            detail = f"creditsUsed = {row.recorded} but its usage sums to {row.expected}{also}"
        elif row.recorded != row.calls:
            detail = f"creditsUsed = {row.recorded} but its call records sum to {row.calls}"
        elif row.recorded != row.exact_ceiling:
            detail = (
                f"creditsUsed = {row.recorded} but its exact cost {row.exact} "
                f"rounds up to {row.exact_ceiling}"
            )
        else:
            detail = f"exactCreditsUsed = {row.exact} but its call records cost {row.calls_exact}"
        violations.append(Violation("experiment", row.id, row.recorded, int(row.expected), detail))
    for row in await session.execute(_CALLS_DISAGREE):
        detail = (
            f"its call records count {row.calls} calls, {row.input} input and {row.output} "
            f"output tokens, its usage rows {row.ledger_calls} calls, {row.ledger_input} input "
            f"and {row.ledger_output} output tokens"
        )
        violations.append(Violation("calls", row.id, row.ledger_calls, row.calls, detail))
    for row in await session.execute(_SIGN_VIOLATIONS):
        detail = f"{row.type} amount {row.amount} has the wrong sign for its type"
        violations.append(Violation("transaction", row.id, row.amount, row.amount, detail))
    for row in await session.execute(_EVENTS_RECORDED_TWICE):
        detail = "recorded both as a USAGE row and as unbilled usage"
        violations.append(Violation("event", row.id, 2, 1, detail))
    for v in await grant_violations(session):
        violations.append(Violation("grant", v.subject_id, v.recorded, v.expected, v.detail))
    return violations


@dataclass(frozen=True)
class Deletion:
    """Recorded usage whose owner or experiment the platform deleted: not a violation.

    `kind` is `owner_deleted` (the experiment stands, its user and that user's transactions are
    gone) or `experiment_deleted`; `calls` and `credits` are those of its call records."""

    kind: str
    experiment_id: str
    user_id: str | None
    calls: int
    credits: int

    def __str__(self) -> str:
        if self.kind == "owner_deleted":
            return (
                f"experiment {self.experiment_id}: {self.calls} calls ({self.credits:,} credits) "
                f"were charged to user {self.user_id}, deleted since with its transactions; "
                "creditsUsed keeps them and their events stay recorded"
            )
        return (
            f"experiment {self.experiment_id} was deleted: {self.calls} calls "
            f"({self.credits:,} credits) stay recorded, and on their owner's ledger"
        )


async def find_deletions(session: AsyncSession) -> list[Deletion]:
    """Every experiment whose charged owner, and every experiment that, the platform deleted."""
    deletions = [
        Deletion("owner_deleted", row.experiment_id, row.user_id, row.calls, int(row.credits))
        for row in await session.execute(_OWNERS_DELETED)
    ]
    deletions += [
        Deletion("experiment_deleted", row.experiment_id, None, row.calls, int(row.credits))
        for row in await session.execute(_EXPERIMENTS_DELETED)
    ]
    return deletions
