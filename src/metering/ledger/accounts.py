"""Users and experiments as operators see them: lookups, the seed, and manual corrections.

Corrections go through the ledger like everything else that moves credits.
"""

from sqlalchemy import func, or_, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from metering.errors import PermanentError
from metering.ledger import journal
from metering.ops.models import CreditTransaction, MAACExperiment, TransactionType, User

SEED_EMAIL = "test@example.com"
SEED_NAME = "Test User"
SEED_CREDITS = 10_000
SEED_PAYMENT_ID = "pi_test_123"
SEED_KEY = "seed:test@example.com:initial-purchase"


class NotFound(PermanentError):
    code = "not_found"


async def find_user(session: AsyncSession, id_or_email: str) -> User:
    """The user with this id or email; `NotFound` otherwise."""
    user = await session.scalar(
        select(User).where(or_(User.id == id_or_email, User.email == id_or_email))
    )
    if user is None:
        raise NotFound(f"no user with id or email {id_or_email!r}")
    return user


async def find_experiment(session: AsyncSession, experiment_id: str) -> MAACExperiment:
    experiment = await session.get(MAACExperiment, experiment_id)
    if experiment is None:
        raise NotFound(f"no experiment with id {experiment_id!r}")
    return experiment


async def ensure_user(session: AsyncSession, email: str, name: str | None = None) -> str:
    """The id of the user with this email, created with 0 credits if missing."""
    await session.execute(
        insert(User)
        .values(email=email, name=name, updated_at=func.now())
        .on_conflict_do_nothing(index_elements=["email"])
    )
    return (await find_user(session, email)).id


async def seed(session: AsyncSession) -> journal.PostedTransaction:
    """The platform's seed: test@example.com with 10,000 purchased credits. Safe to run again.

    The platform's own Prisma seed writes the same user and purchase, without an idempotency key.
    The seed purchase is therefore recognised by its user and Stripe payment id, whoever wrote
    it: run in either order, the two seeds leave one PURCHASE row and 10,000 credits. An existing
    purchase comes back with `created` False (its stored key, or "" for the platform's row).
    """
    user_id = await ensure_user(session, SEED_EMAIL, SEED_NAME)
    # Held until commit, so that two seeds running at once cannot both find no purchase.
    await session.execute(
        text('SELECT 1 FROM "User" WHERE id = :id FOR NO KEY UPDATE'), {"id": user_id}
    )
    existing = await session.scalar(
        select(CreditTransaction)
        .where(
            CreditTransaction.user_id == user_id,
            CreditTransaction.type == TransactionType.PURCHASE,
            CreditTransaction.stripe_payment_id == SEED_PAYMENT_ID,
        )
        .order_by(CreditTransaction.created_at, CreditTransaction.id)
        .limit(1)
    )
    if existing is not None:
        return journal.PostedTransaction(
            transaction_id=existing.id,
            idempotency_key=existing.idempotency_key or "",
            user_id=user_id,
            type=existing.type,
            amount=existing.amount,
            created=False,
        )
    return await journal.post(
        session,
        journal.Posting(
            user_id=user_id,
            type=TransactionType.PURCHASE,
            amount=SEED_CREDITS,
            description="Initial credit purchase",
            idempotency_key=SEED_KEY,
            stripe_payment_id=SEED_PAYMENT_ID,
        ),
    )


def _operator_metadata(reason: str, operator: str) -> dict[str, str]:
    """Who made an operator's posting and why, as an audit log keeps it; both are required."""
    if not reason.strip():
        raise PermanentError("a reason is required", code="no_reason")
    if not operator.strip():
        raise PermanentError("the operator's name is required", code="no_operator")
    return {"reason": reason, "operator": operator.strip()}


async def refund_experiment(
    session: AsyncSession, experiment_id: str, credits: int, reason: str, key: str, operator: str
) -> journal.PostedTransaction:
    """Give `credits` back to an experiment's owner as a REFUND row (e.g. a failed run).

    `key` (in the operators' key space) makes the refund idempotent: the same key posts once, and
    a key already posted for anything else is refused (`journal.KeyConflict`). `operator` is
    recorded in the row's metadata with the reason.
    """
    journal.check_amount(TransactionType.REFUND, credits)
    metadata = {"experimentId": experiment_id, **_operator_metadata(reason, operator)}
    experiment = await find_experiment(session, experiment_id)
    if experiment.user_id is None:
        raise PermanentError(f"experiment {experiment_id!r} has no user to refund", code="no_owner")
    return await journal.post(
        session,
        journal.Posting(
            user_id=experiment.user_id,
            type=TransactionType.REFUND,
            amount=credits,
            description=f"Refund for experiment {experiment_id}: {reason}",
            idempotency_key=key,
            metadata=metadata,
            experiment_id=experiment_id,
        ),
    )


async def adjust_user(
    session: AsyncSession, id_or_email: str, credits: int, reason: str, key: str, operator: str
) -> journal.PostedTransaction:
    """An operator's correction: an ADJUSTMENT row of `credits` (positive or negative).

    `key` (in the operators' key space) makes the correction idempotent, as for a refund;
    `operator` is recorded in the row's metadata with the reason.
    """
    journal.check_amount(TransactionType.ADJUSTMENT, credits)
    metadata = _operator_metadata(reason, operator)
    user = await find_user(session, id_or_email)
    return await journal.post(
        session,
        journal.Posting(
            user_id=user.id,
            type=TransactionType.ADJUSTMENT,
            amount=credits,
            description=f"Adjustment: {reason}",
            idempotency_key=key,
            metadata=metadata,
        ),
    )
