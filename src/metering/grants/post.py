"""Giving a user a grant: a positive ADJUSTMENT and its `CreditGrant` row, once per key."""

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.errors import PermanentError
from metering.grants.read import Grant, grants_by_id
from metering.ledger import accounts, journal
from metering.ops.models import TransactionType

MAX_PRIORITY = 1000
"""Priorities run from 0 (the default) to this; higher is drawn first."""
MAX_KEY = 200
MAX_REASON = 500
SOURCES = ("cli", "api")


class InvalidGrant(PermanentError):
    """A grant asked for with values it cannot have (an expiry past, a priority out of range)."""

    code = "invalid_grant"


class GrantConflict(journal.KeyConflict):
    """A grant key posted again with another expiry, priority or reason than its first grant."""


@dataclass(frozen=True)
class GrantRequest:
    """A grant to give: `credits` (> 0) until `expires_at` (UTC if naive; kept to the
    millisecond, as TIMESTAMP(3) holds it). `key` makes it once: the same key posts once."""

    credits: int
    expires_at: datetime
    reason: str
    key: str
    priority: int = 0
    source: str = "cli"

    def expires_at_utc(self) -> datetime:
        """The expiry as the column holds it: naive UTC, whole milliseconds."""
        moment = self.expires_at
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@dataclass(frozen=True)
class PostedGrant:
    """The grant a key maps to; `created` is False when the key had been posted before."""

    grant: Grant
    created: bool


_PAST = text("SELECT CAST(:at AS timestamp(3)) <= (now() AT TIME ZONE 'UTC')")
_KEY_TAKEN = text('SELECT 1 FROM "CreditTransaction" WHERE "idempotencyKey" = :key')
_INSERT_GRANT = text(
    'INSERT INTO "CreditGrant" (id, "userId", amount, remaining, priority, "expiresAt", reason, '
    "source) VALUES (:id, :user_id, :amount, :amount, :priority, :expires_at, :reason, :source)"
)


async def post_grant(session: AsyncSession, id_or_email: str, request: GrantRequest) -> PostedGrant:
    """Give the user (id or email) the grant, in the caller's transaction, or return the grant
    its key gave before. The key posted with other values is refused (`GrantConflict`, or
    `journal.KeyConflict` for another user or amount); so is a new grant whose expiry is not in
    the future (by the database's clock). A refusal writes nothing."""
    _check(request)
    expires_at = request.expires_at_utc()
    user = await accounts.find_user(session, id_or_email)
    posting = journal.Posting(
        user_id=user.id,
        type=TransactionType.ADJUSTMENT,
        amount=request.credits,
        description=f"Grant: {request.reason} (expires {expires_at.isoformat()}Z)",
        idempotency_key=request.key,
        metadata={
            "grant": request.key,
            "reason": request.reason,
            "expiresAt": expires_at.isoformat() + "Z",
            "priority": request.priority,
            "source": request.source,
        },
        kind=journal.KeyKind.GRANT,
    )
    # A repeat of a grant given before may come after its expiry: it returns that grant.
    past = await session.scalar(_PAST, {"at": expires_at})
    if past and await session.scalar(_KEY_TAKEN, {"key": posting.stored_key}) is None:
        raise InvalidGrant(f"expires_at {expires_at.isoformat()}Z is not in the future")
    posted = await journal.post(session, posting)
    if not posted.created:
        (first,) = (await grants_by_id(session, [posted.transaction_id])).values()
        _refuse_another_grant(first, request, expires_at)
        return PostedGrant(first, created=False)
    await session.execute(
        _INSERT_GRANT,
        {
            "id": posted.transaction_id,
            "user_id": user.id,
            "amount": request.credits,
            "priority": request.priority,
            "expires_at": expires_at,
            "reason": request.reason,
            "source": request.source,
        },
    )
    (grant,) = (await grants_by_id(session, [posted.transaction_id])).values()
    return PostedGrant(grant, created=True)


def _check(request: GrantRequest) -> None:
    if isinstance(request.credits, bool) or request.credits <= 0:
        raise InvalidGrant(f"a grant's credits must be greater than 0, got {request.credits}")
    journal.check_amount(TransactionType.ADJUSTMENT, request.credits)
    if not 0 <= request.priority <= MAX_PRIORITY:
        raise InvalidGrant(f"priority must be 0 to {MAX_PRIORITY}, got {request.priority}")
    if not request.reason.strip() or len(request.reason) > MAX_REASON or "\x00" in request.reason:
        raise InvalidGrant(f"a reason of 1 to {MAX_REASON} characters (no NUL) is required")
    if not request.key.strip() or len(request.key) > MAX_KEY or "\x00" in request.key:
        raise InvalidGrant(f"a key of 1 to {MAX_KEY} characters (no NUL) is required")
    if request.source not in SOURCES:
        raise InvalidGrant(f"source must be one of {', '.join(SOURCES)}")


def _refuse_another_grant(first: Grant, request: GrantRequest, expires_at: datetime) -> None:
    """`GrantConflict` unless `request` asks for the grant `first` is (a retry of it)."""
    asked = (expires_at.replace(tzinfo=UTC), request.priority, request.reason)
    if asked == (first.expires_at, first.priority, first.reason):
        return
    raise GrantConflict(
        f"grant key {request.key!r} was already posted as grant {first.grant_id} "
        f"(expires {first.expires_at.isoformat()}, priority {first.priority}, "
        f"reason {first.reason!r}); refusing another grant under the same key"
    )
