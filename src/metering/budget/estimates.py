"""Budget estimates: price an experiment's expected calls and store `estimatedCredits`.

The only write is `MAACExperiment.estimatedCredits`; no credits move. Whether the owner's balance
covers the estimate is the preflight rule: a run whose estimate exceeds the balance is refused.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from metering.ledger import accounts
from metering.ledger.journal import INT32_MAX
from metering.ops.models import MAACExperiment, User
from metering.pricing import Catalog, EstimateItem, InvalidUsage, estimate_credits


@dataclass(frozen=True)
class Estimate:
    """The stored estimate in credits and, for an experiment with an owner, the owner's balance.

    `covered` is None without an owner; `shortfall` is the credits missing (0 when covered).
    """

    experiment_id: str
    api_key_mode: str
    estimated_credits: int
    user_id: str | None
    balance: int | None
    covered: bool | None
    shortfall: int | None


async def record_estimate(
    session: AsyncSession,
    experiment_id: str,
    items: Sequence[EstimateItem],
    *,
    catalog: Catalog,
    markup: Decimal,
    platform_fee_usd_per_million: Decimal,
    at: datetime,
) -> Estimate:
    """Price `items` at the prices in force at `at` under the experiment's `apiKeyMode`, store
    the result as its `estimatedCredits`, and compare it with the owner's balance.

    Raises `accounts.NotFound` for an unknown experiment and a `PricingError` for an unpriced
    model, tier or mode.
    """
    experiment = await accounts.find_experiment(session, experiment_id)
    credits = estimate_credits(
        catalog, items, experiment.api_key_mode, markup, platform_fee_usd_per_million, at
    )
    if credits > INT32_MAX:
        raise InvalidUsage(f"an estimate of {credits:,} credits does not fit estimatedCredits")
    await session.execute(
        update(MAACExperiment)
        .where(MAACExperiment.id == experiment.id)
        .values(estimated_credits=credits, updated_at=func.now())
    )
    balance = None
    if experiment.user_id is not None:
        balance = await session.scalar(select(User.credits).where(User.id == experiment.user_id))
    covered = None if balance is None else balance >= credits
    return Estimate(
        experiment_id=experiment.id,
        api_key_mode=experiment.api_key_mode,
        estimated_credits=credits,
        user_id=experiment.user_id,
        balance=balance,
        covered=covered,
        shortfall=None if balance is None else max(0, credits - balance),
    )
