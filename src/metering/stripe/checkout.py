"""Checkout Sessions that sell credits, in payment mode, one line item priced in whole cents.

Price: 1 credit = $0.001, so 10 credits = 1 cent and 1,000 credits = $1.00. A purchase is a whole
number of cents (credits a multiple of 10), at least `MIN_CHARGE_CENTS` (Stripe refuses smaller USD
charges) and at most `MAX_CREDITS`. The session's metadata carries the user id and the credits;
the purchase handler credits what metering recorded when it created the session (`purchases`),
never what a session or a client claims later.
"""

from dataclasses import dataclass
from decimal import Decimal

import stripe
from stripe.params.checkout import SessionCreateParams

from metering.errors import PermanentError, TransientError
from metering.ops.logs import redact_text
from metering.pricing.money import USD_PER_CREDIT

CURRENCY = "usd"
CENTS_PER_USD = 100
MIN_CHARGE_CENTS = 50
"""Stripe's minimum USD charge: $0.50, that is 500 credits."""
MAX_CREDITS = 10_000_000
"""$10,000 per purchase: a cap against typos, well inside a 32-bit balance."""


class InvalidPurchase(PermanentError):
    code = "invalid_amount"


class UnknownPack(PermanentError):
    code = "unknown_pack"


class StripeRequestFailed(TransientError):
    """Stripe answered with an error (or not at all); the message is safe to show."""

    code = "stripe_error"

    def __init__(self, message: str, *, code: str | None = None, unavailable: bool = False):
        super().__init__(message, code=code)
        self.unavailable = unavailable


@dataclass(frozen=True)
class CreatedSession:
    """A Checkout Session to redirect the user to. `amount_cents` is in US cents."""

    id: str
    url: str
    user_id: str
    credits: int
    amount_cents: int


def price_cents(credits: int) -> int:
    """US cents charged for `credits`; `InvalidPurchase` unless a whole, allowed amount."""
    if isinstance(credits, bool) or not isinstance(credits, int):
        raise InvalidPurchase(f"credits must be a whole number, not {credits!r}")
    if not 0 < credits <= MAX_CREDITS:
        raise InvalidPurchase(f"credits must be between 1 and {MAX_CREDITS:,}, got {credits:,}")
    cents = Decimal(credits) * USD_PER_CREDIT * CENTS_PER_USD
    if cents != cents.to_integral_value():
        raise InvalidPurchase(f"credits must be a multiple of 10 (whole cents), got {credits:,}")
    if cents < MIN_CHARGE_CENTS:
        raise InvalidPurchase(
            f"a purchase must be at least {MIN_CHARGE_CENTS} cents "
            f"({MIN_CHARGE_CENTS * 10:,} credits), got {credits:,} credits"
        )
    return int(cents)


def credits_to_buy(packs: dict[str, int], *, pack: str | None, credits: int | None) -> int:
    """The credits of a named pack, or the number asked for: exactly one of the two."""
    if (pack is None) == (credits is None):
        raise InvalidPurchase("name either a credit pack or a number of credits")
    if pack is not None:
        if pack not in packs:
            known = ", ".join(sorted(packs)) or "none"
            raise UnknownPack(f"no credit pack named {pack!r} (packs: {known})")
        return packs[pack]
    assert credits is not None
    return credits


def session_params(user_id: str, credits: int, frontend_url: str) -> SessionCreateParams:
    """The form of `POST /v1/checkout/sessions` for a purchase of `credits` by `user_id`."""
    metadata = {"userId": user_id, "credits": str(credits)}
    base = frontend_url.rstrip("/")
    return {
        "mode": "payment",
        "client_reference_id": user_id,
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata},
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": CURRENCY,
                    "unit_amount": price_cents(credits),
                    "product_data": {"name": f"{credits:,} credits"},
                },
            }
        ],
        "success_url": f"{base}/billing/success?session_id={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{base}/billing/cancel",
        # The session's amounts stay in the recorded currency: with Adaptive Pricing on, Stripe
        # may present (and, on older API versions, report) the buyer's local currency instead.
        "adaptive_pricing": {"enabled": False},
    }


async def create_session(
    client: stripe.StripeClient, *, user_id: str, credits: int, frontend_url: str
) -> CreatedSession:
    """Create a Checkout Session selling `credits` to `user_id` (who must exist)."""
    params = session_params(user_id, credits, frontend_url)
    amount_cents = price_cents(credits)
    try:
        session = await client.v1.checkout.sessions.create_async(params=params)
    except stripe.APIConnectionError as error:
        raise StripeRequestFailed(
            f"Stripe could not be reached: {_safe(error)}",
            code="stripe_unavailable",
            unavailable=True,
        ) from error
    except stripe.StripeError as error:
        raise StripeRequestFailed(f"Stripe refused the Checkout session: {_safe(error)}") from error
    if not session.url:
        raise StripeRequestFailed(f"Stripe returned Checkout session {session.id} without a url")
    return CreatedSession(
        id=session.id,
        url=session.url,
        user_id=user_id,
        credits=credits,
        amount_cents=amount_cents,
    )


def _safe(error: stripe.StripeError) -> str:
    return redact_text(error.user_message or type(error).__name__)
