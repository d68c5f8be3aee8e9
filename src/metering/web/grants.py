"""`POST /users/{id}/grants`: credits that expire (bearer token)."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from metering.budget import halt
from metering.grants import post
from metering.grants.read import Grant
from metering.ledger import journal
from metering.ops import redis_client
from metering.ops.db import session_scope
from metering.ops.logs import get_logger
from metering.web import errors
from metering.web.auth import require_api_token
from metering.web.deps import State
from metering.web.params import UserKey, in_utc

router = APIRouter(
    prefix="/users",
    tags=["grants"],
    dependencies=[Depends(require_api_token)],
    responses=errors.responses(400, 401, 404, 409, 422, 503),
)
log = get_logger(__name__)
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"


class GrantRequest(BaseModel):
    """Credits that expire. `credits` is a whole number of credits (1 credit = $0.001);
    `expires_at` is RFC 3339, in the future; a higher `priority` (0 to 1,000) is drawn first,
    then the earliest expiry, then purchased credits. The same `key` gives the grant once."""

    model_config = ConfigDict(extra="forbid")

    credits: Annotated[int, Field(strict=True, ge=1, le=journal.INT32_MAX)]
    expires_at: Annotated[AwareDatetime, AfterValidator(in_utc)]
    reason: Annotated[str, Field(min_length=1, max_length=post.MAX_REASON, pattern=PRINTABLE)]
    key: Annotated[str, Field(min_length=1, max_length=post.MAX_KEY, pattern=PRINTABLE)]
    priority: Annotated[int, Field(strict=True, ge=0, le=post.MAX_PRIORITY)] = 0


@dataclass(frozen=True)
class GrantResponse(Grant):
    """The grant: `credits` granted and `remaining`, in credits; `created` is false when its key
    had given it before (nothing changed)."""

    created: bool


@router.post(
    "/{user_id}/grants",
    status_code=201,
    responses={200: {"model": GrantResponse, "description": "Given before under this key."}},
)
async def post_grant(
    user_id: UserKey, body: GrantRequest, state: State, response: Response
) -> GrantResponse:
    """Give the user (id or email) credits that expire: a positive ADJUSTMENT naming the grant.
    201 when given, 200 when its key gave it before; 409 when the key gave another grant (or
    was used for another user or amount); 422 for an expiry not in the future."""
    request = post.GrantRequest(
        credits=body.credits,
        expires_at=body.expires_at,
        reason=body.reason,
        key=body.key,
        priority=body.priority,
        source="api",
    )
    async with session_scope(state.sessions) as session:
        posted = await post.post_grant(session, user_id, request)
    if posted.created:
        await _sync_halts(state, posted.grant.user_id)
    else:
        response.status_code = 200
    return GrantResponse(**vars(posted.grant), created=posted.created)


async def _sync_halts(state: State, user_id: str) -> None:
    """Lift the user's halt flags if the grant brought the balance back (`halt.sync_halts`).
    The grant is committed: a failure here is logged, and the user's next sync corrects it."""
    settings = state.settings
    try:
        redis = await redis_client.open_client(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        try:
            await halt.sync_halts(
                redis,
                state.sessions,
                settings.metering_redis_prefix,
                [user_id],
                settings.metering_halt_threshold,
            )
        finally:
            await redis.aclose()
    except (RedisError, OSError, SQLAlchemyError) as error:
        log.warning("grant posted, halt flags not synced", user_id=user_id, error=str(error))
