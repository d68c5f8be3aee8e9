"""What the refunds and disputes of one payment claw back: a pure function of the events seen.

Each refund and dispute of a payment is a *reversal*, known by its Stripe id. The state of a
payment's reversals is a join of observations, so any order and any repetition of the same events
ends in the same state:
- a reversal keeps its furthest status: statuses only move forward (a failed or canceled refund
  never succeeds again; a closed dispute does not reopen), and keeps its largest amount;
- a charge keeps the largest `amount_refunded` reported for it.

Money a reversal holds (cents, the smallest unit of the payment's currency):
- a refund holds its amount unless it `failed` or was `canceled` (a pending refund holds it: Stripe
  counts it in `amount_refunded` at once);
- a dispute holds its amount unless closed in the merchant's favour (`won`, an inquiry's
  `warning_closed`, `prevented`: the chargeback was stopped, a refund does the rest);
- a charge's `amount_refunded` beyond the refunds known by id (of any status) is held as its
  *unnamed* refunds: since API version 2022-11-15 `charge.refunded` carries no list of refunds,
  and a refund may be known only by that amount until its own event arrives.

The credits to have clawed back are `purchase.credits_for(min(paid, held))`: never more than the
payment bought, whatever overlaps (a refund then a lost dispute of the same money claws back once).
"""

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

REFUND_EVENTS = (
    "charge.refund.updated",
    "refund.created",
    "refund.updated",
    "refund.failed",
)
"""Events whose object is a refund."""
DISPUTE_EVENTS = (
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
)
CHARGE_EVENTS = ("charge.refunded",)
REVERSAL_EVENTS = (*CHARGE_EVENTS, *REFUND_EVENTS, *DISPUTE_EVENTS)

_REFUND_RANK = {"requires_action": 0, "pending": 0, "succeeded": 1, "canceled": 2, "failed": 2}
REFUND_RELEASED = frozenset({"failed", "canceled"})
"""Refund statuses after which the customer has not got the money: credits are given back."""
_DISPUTE_RANK = {"lost": 1, "won": 2, "warning_closed": 2, "prevented": 2, "charge_refunded": 2}
DISPUTE_RELEASED = frozenset({"won", "warning_closed", "prevented", "charge_refunded"})
"""Dispute statuses after which Stripe keeps (or returns) the money: credits are given back."""


class Kind(enum.StrEnum):
    REFUND = "refund"
    DISPUTE = "dispute"
    UNNAMED = "unnamed"
    """A charge's `amount_refunded`: the refunds no refund event or list names yet."""


class MalformedReversal(ValueError):
    """A refund, dispute or charge without the fields its money depends on."""


@dataclass(frozen=True)
class Reversal:
    """One observation of a reversal. `source` is the refund or dispute id, or for `UNNAMED` the
    charge id; `cents` its amount (for `UNNAMED`: the charge's `amount_refunded`)."""

    kind: Kind
    source: str
    cents: int
    status: str
    charge: str | None = None

    @property
    def holds(self) -> bool:
        """Whether the money stays with the customer (for `UNNAMED`: see `held_cents`)."""
        if self.kind is Kind.REFUND:
            return self.status not in REFUND_RELEASED
        if self.kind is Kind.DISPUTE:
            return self.status not in DISPUTE_RELEASED
        return True

    def merge(self, other: "Reversal") -> "Reversal":
        """The join of two observations of the same source: commutative and idempotent."""
        rank = _DISPUTE_RANK if self.kind is Kind.DISPUTE else _REFUND_RANK
        mine = (rank.get(self.status, 0), self.status)
        theirs = (rank.get(other.status, 0), other.status)
        charges = [c for c in (self.charge, other.charge) if c is not None]
        return replace(
            self,
            cents=max(self.cents, other.cents),
            status=max(mine, theirs)[1],
            charge=min(charges) if charges else None,
        )


State = Mapping[str, Reversal]
"""A payment's reversals by source."""


def observe(event_type: str, obj: Mapping[str, Any]) -> list[Reversal]:
    """The reversals an event's object reports; `MalformedReversal` if it lacks their money."""
    if event_type in CHARGE_EVENTS:
        charge = _text(obj, "id")
        found = [Reversal(Kind.UNNAMED, charge, _cents(obj, "amount_refunded"), "refunded", charge)]
        # API versions before 2022-11-15 list the charge's refunds; newer ones omit the list.
        refunds = obj.get("refunds")
        listed = refunds.get("data") if isinstance(refunds, Mapping) else None
        for refund in listed if isinstance(listed, list) else []:
            if isinstance(refund, Mapping):
                found.append(_refund(refund, charge))
        return found
    if event_type in REFUND_EVENTS:
        return [_refund(obj, None)]
    if event_type in DISPUTE_EVENTS:
        status = obj.get("status")
        return [
            Reversal(
                Kind.DISPUTE,
                _text(obj, "id"),
                _cents(obj, "amount"),
                status if isinstance(status, str) else "",
                reference_id(obj.get("charge")),
            )
        ]
    return []


def fold(state: State, reversals: Iterable[Reversal]) -> dict[str, Reversal]:
    """`state` joined with more observations."""
    merged = dict(state)
    for reversal in reversals:
        known = merged.get(reversal.source)
        merged[reversal.source] = reversal if known is None else known.merge(reversal)
    return merged


def held_cents(state: State) -> int:
    """Cents the customer holds back: refunds and disputes not released, plus each charge's
    refunded amount that no known refund (of any status) accounts for. A refund that names no
    charge (Stripe allows it) belongs to one of the payment's charges: it accounts for refunded
    amounts too, charge by charge in id order, so its money is never counted twice."""
    named: dict[str | None, int] = {}
    held = 0
    for reversal in state.values():
        if reversal.kind is Kind.REFUND:
            named[reversal.charge] = named.get(reversal.charge, 0) + reversal.cents
        if reversal.kind is not Kind.UNNAMED and reversal.holds:
            held += reversal.cents
    unattributed = named.pop(None, 0)
    for source in sorted(s for s, r in state.items() if r.kind is Kind.UNNAMED):
        unexplained = max(0, state[source].cents - named.get(source, 0))
        absorbed = min(unexplained, unattributed)
        unattributed -= absorbed
        held += unexplained - absorbed
    return held


def changes(before: State, after: State) -> list[tuple[str, Reversal]]:
    """The sources whose state differs, each with the idempotency key of its change, in a fixed
    order. Keys are unique per source and state, so a key is never posted twice:
    - a refund or dispute first holding money: its id;
    - a refund or dispute releasing it: `{id}:reinstated`;
    - anything else (an amount that grew): `{id}:{status}:{cents}`;
    - a charge's refunded amount rising to `n` cents: `{charge}:unnamed:{n}`."""
    keyed = []
    # Named reversals first, so that money a refund's own event names is keyed by its id.
    for source in sorted(after, key=lambda s: (after[s].kind is Kind.UNNAMED, s)):
        new, old = after[source], before.get(source)
        if new == old:
            continue
        if new.kind is Kind.UNNAMED:
            key = f"{source}:unnamed:{new.cents}"
        elif new.holds and (old is None or not old.holds):
            key = source
        elif not new.holds and (old is None or old.holds):
            key = f"{source}:reinstated"
        else:
            key = f"{source}:{new.status}:{new.cents}"
        keyed.append((key, new))
    return keyed


def _refund(obj: Mapping[str, Any], charge: str | None) -> Reversal:
    status = obj.get("status")
    return Reversal(
        Kind.REFUND,
        _text(obj, "id"),
        _cents(obj, "amount"),
        status if isinstance(status, str) else "",
        reference_id(obj.get("charge")) or charge,
    )


def reference_id(value: Any) -> str | None:
    """The id of a reference, whether Stripe sent it as an id or as an expanded object."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedReversal(f"{obj.get('object', 'object')} has no {key}")
    return value


def _cents(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedReversal(f"{obj.get('object', 'object')} {obj.get('id')} has no valid {key}")
    return value
