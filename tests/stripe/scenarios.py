"""Refund and dispute histories of one payment, and the events Stripe sends for them.

A scenario is what happened (each refund's and dispute's amount and statuses over time, in one
interleaving); `stripe_events` is what Stripe sends about it, in the order it happened, shaped
as one API version or another; `expected_clawback` is what the payment must end up clawed back.
"""

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.stripe.deliveries import charge, dispute, event, refund

CREDITS = 10_000
CENTS = 1_000
REFUND_LIVES = [
    ("succeeded",),
    ("pending",),
    ("pending", "succeeded"),
    ("pending", "failed"),
    ("succeeded", "failed"),
    ("requires_action", "canceled"),
]
DISPUTE_LIVES = [
    ("needs_response",),
    ("needs_response", "won"),
    ("needs_response", "lost"),
    ("needs_response", "under_review", "lost"),
    ("warning_needs_response", "warning_closed"),
    ("warning_needs_response", "needs_response", "won"),
]
RELEASED = {"failed", "canceled", "won", "warning_closed"}
CLOSED = {"won", "lost", "warning_closed"}


@dataclass(frozen=True)
class Scenario:
    """`refunds` and `disputes`: (cents, statuses in order); `steps`: which of them (refunds
    first, then disputes, by index) moves next; `listed`: the charge lists its refunds (API
    versions before 2022-11-15) instead of Stripe sending `refund.created`."""

    refunds: list[tuple[int, tuple[str, ...]]]
    disputes: list[tuple[int, tuple[str, ...]]]
    steps: list[int]
    listed: bool

    def expected_clawback(self) -> int:
        held = sum(c for c, life in self.refunds + self.disputes if life[-1] not in RELEASED)
        return CREDITS * min(held, CENTS) // CENTS


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    refund_cents = draw(st.lists(st.integers(1, CENTS), max_size=3))
    while sum(refund_cents) > CENTS:  # Stripe never refunds more than the charge
        refund_cents.pop()
    refunds = [(c, draw(st.sampled_from(REFUND_LIVES))) for c in refund_cents]
    disputes = [
        (draw(st.integers(1, CENTS)), draw(st.sampled_from(DISPUTE_LIVES)))
        for _ in range(draw(st.integers(0, 2)))
    ]
    moves = [i for i, (_, life) in enumerate(refunds + disputes) for _ in life]
    steps = draw(st.permutations(moves))
    return Scenario(refunds, disputes, steps, draw(st.booleans()))


def stripe_events(payment_intent: str, scenario: Scenario, ids: list[str]) -> list[dict[str, Any]]:
    """The events Stripe sends, in the order things happened. `ids`: one Stripe id per refund
    then per dispute."""
    everything = scenario.refunds + scenario.disputes
    status: dict[int, str] = {}
    sent = []
    for index in scenario.steps:
        cents, life = everything[index]
        step = sum(1 for done in sent if done[0] == index)
        now = life[step]
        first = index not in status
        status[index] = now
        sent.append(
            (index, _event(payment_intent, scenario, ids, index, cents, now, first, status))
        )
    return [evt for _, evts in sent for evt in evts]


def _event(
    payment_intent: str,
    scenario: Scenario,
    ids: list[str],
    index: int,
    cents: int,
    now: str,
    first: bool,
    status: dict[int, str],
) -> list[dict[str, Any]]:
    if index >= len(scenario.refunds):
        obj = dispute(payment_intent, cents, now, dispute_id=ids[index])
        kind = "created" if first else "closed" if now in CLOSED else "updated"
        return [event(f"charge.dispute.{kind}", obj)]
    this = refund(payment_intent, cents, now, ids[index])
    if not first:
        return [event("charge.refund.updated", this)]
    refunds = [i for i in status if i < len(scenario.refunds)]
    refunded = sum(scenario.refunds[i][0] for i in refunds if status[i] not in RELEASED)
    if scenario.listed:
        listed = [
            refund(payment_intent, scenario.refunds[i][0], status[i], ids[i]) for i in refunds
        ]
        return [event("charge.refunded", charge(payment_intent, CENTS, refunded, listed))]
    return [
        event("refund.created", this),
        event("charge.refunded", charge(payment_intent, CENTS, refunded)),
    ]
