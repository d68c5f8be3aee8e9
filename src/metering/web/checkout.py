"""`POST /checkout/sessions`: a Stripe Checkout Session selling credits to a user."""

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from metering.ledger import accounts
from metering.ops.db import session_scope
from metering.stripe import checkout, purchases
from metering.web.auth import require_api_token
from metering.web.deps import State

router = APIRouter(prefix="/checkout", tags=["checkout"])


class CheckoutRequest(BaseModel):
    """Who buys, and either a credit pack (by name, from settings) or a number of credits."""

    model_config = ConfigDict(extra="forbid")

    user_id: Annotated[str, Field(min_length=1, max_length=200)]
    pack: str | None = None
    credits: StrictInt | None = None


class CheckoutResponse(BaseModel):
    """The session to redirect to. `credits` are bought for `amount_cents` US cents."""

    id: str
    url: str
    user_id: str
    credits: int
    amount_cents: int
    currency: str = checkout.CURRENCY


@router.post(
    "/sessions", status_code=201, dependencies=[Depends(require_api_token)], tags=["checkout"]
)
async def create_checkout_session(body: CheckoutRequest, state: State) -> CheckoutResponse:
    """Create a Checkout Session in payment mode and record it; credits arrive when Stripe says
    it is paid."""
    credits = checkout.credits_to_buy(
        state.settings.stripe_credit_packs, pack=body.pack, credits=body.credits
    )
    checkout.price_cents(credits)
    async with session_scope(state.sessions) as session:
        user = await accounts.find_user(session, body.user_id)
        user_id = user.id
    created = await checkout.create_session(
        state.require_stripe(),
        user_id=user_id,
        credits=credits,
        frontend_url=state.settings.frontend_url,
    )
    # Recorded before the url is handed out: a session nobody has the url of cannot be paid, so
    # every paid session of ours has its record (the webhook credits only recorded sessions).
    async with session_scope(state.sessions) as session:
        await purchases.record_order(
            session,
            purchases.Order(created.id, user_id, credits, created.amount_cents, checkout.CURRENCY),
        )
    return CheckoutResponse(
        id=created.id,
        url=created.url,
        user_id=created.user_id,
        credits=created.credits,
        amount_cents=created.amount_cents,
    )
