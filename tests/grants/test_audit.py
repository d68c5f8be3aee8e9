"""Reconcile proves each grant's remainder from its draws and its expiry."""

import pytest
from sqlalchemy import text

from metering.grants.expire import expire_all_due
from metering.ledger.reconcile import find_violations
from tests.grants.helpers import Sessions, charge, give, make_due, user_with_experiment

TAMPERING = {
    "a remainder that draws do not explain": 'UPDATE "CreditGrant" SET remaining = remaining + 1 '
    "WHERE id = :grant",
    "a draw beyond what the USAGE row charged": 'UPDATE "GrantDraw" SET amount = amount + 1000 '
    'WHERE "grantId" = :grant',
    "an expiry that removed less than was left": 'UPDATE "CreditTransaction" SET amount = -1 '
    "WHERE \"idempotencyKey\" = 'expiry:' || :grant",
    "an expired grant with credits left": 'UPDATE "CreditGrant" SET remaining = 5 '
    "WHERE id = :grant",
}


@pytest.mark.parametrize("statement", TAMPERING.values(), ids=TAMPERING.keys())
async def test_a_grant_that_does_not_add_up_is_a_violation(
    sessions: Sessions, statement: str
) -> None:
    user_id, experiment_id = await user_with_experiment(sessions, purchased=100)
    grant_id = await give(sessions, user_id, 100)
    await charge(sessions, experiment_id, 30)
    await make_due(sessions, grant_id)
    await expire_all_due(sessions)
    async with sessions() as session, session.begin():
        assert await find_violations(session) == []
        await session.execute(text(statement), {"grant": grant_id})
        violations = await find_violations(session)
        await session.rollback()
    assert any(v.kind == "grant" for v in violations)
