"""The state of a payment's refunds and disputes, without a database: any order, any count."""

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.stripe import reversals
from metering.stripe.purchases import Purchase
from metering.stripe.reversals import Kind, Reversal
from tests.stripe.deliveries import charge, dispute, new_id, refund
from tests.stripe.scenarios import CENTS, CREDITS, Scenario, scenarios, stripe_events

PURCHASE = Purchase("user", CREDITS, CENTS)
PI = "pi_state"


def observations(events: list[dict[str, Any]]) -> list[list[Reversal]]:
    return [reversals.observe(e["type"], e["data"]["object"]) for e in events]


def settle(deliveries: list[list[Reversal]]) -> tuple[int, dict[str, int], list[int]]:
    """What `clawbacks.settle` posts, delivery by delivery: the net clawback, the rows by key,
    and the net clawback after each delivery."""
    state: dict[str, Reversal] = {}
    rows: dict[str, int] = {}
    clawed_back = 0
    trail = []
    for observed in deliveries:
        after = reversals.fold(state, observed)
        for key, reversal in reversals.changes(state, after):
            state[reversal.source] = reversal
            target = PURCHASE.credits_for(reversals.held_cents(state))
            if target != clawed_back:
                assert key not in rows, f"key {key} posted twice"
                rows[key] = clawed_back - target
                clawed_back = target
        state = after
        trail.append(clawed_back)
    return clawed_back, rows, trail


@given(scenario=scenarios(), data=st.data())
def test_any_order_and_repetition_claws_back_what_is_held_never_more_than_bought(
    scenario: Scenario, data: st.DataObject
) -> None:
    ids = [new_id("re") for _ in scenario.refunds] + [new_id("dp") for _ in scenario.disputes]
    events = observations(stripe_events(PI, scenario, ids))
    repeated = events + data.draw(st.lists(st.sampled_from(events), max_size=6)) if events else []
    shuffled = data.draw(st.permutations(repeated))

    in_order, _, _ = settle(events)
    clawed_back, rows, trail = settle(shuffled)

    assert in_order == clawed_back == scenario.expected_clawback()
    assert all(0 <= credits <= CREDITS for credits in trail)
    assert -sum(rows.values()) == clawed_back
    assert reversals.fold({}, [r for e in shuffled for r in e]) == reversals.fold(
        {}, [r for e in events for r in e]
    )


def test_a_refund_then_a_lost_dispute_of_the_same_money_claws_back_once() -> None:
    state = reversals.fold(
        {},
        [
            Reversal(Kind.UNNAMED, "ch_1", CENTS, "refunded", "ch_1"),
            Reversal(Kind.DISPUTE, "dp_1", CENTS, "lost", "ch_1"),
        ],
    )

    assert reversals.held_cents(state) == 2 * CENTS
    assert PURCHASE.credits_for(reversals.held_cents(state)) == CREDITS


def test_statuses_only_move_forward() -> None:
    succeeded = Reversal(Kind.REFUND, "re_1", 300, "succeeded", "ch_1")
    failed = Reversal(Kind.REFUND, "re_1", 300, "failed", "ch_1")
    won = Reversal(Kind.DISPUTE, "dp_1", 300, "won")
    open_ = Reversal(Kind.DISPUTE, "dp_1", 300, "needs_response")

    assert succeeded.merge(failed) == failed.merge(succeeded) == failed
    assert won.merge(open_) == open_.merge(won) == won
    assert (failed.holds, won.holds, succeeded.holds, open_.holds) == (False, False, True, True)


def test_a_charges_refunded_amount_counts_only_what_no_known_refund_accounts_for() -> None:
    unnamed = Reversal(Kind.UNNAMED, "ch_1", 1_000, "refunded", "ch_1")
    named = Reversal(Kind.REFUND, "re_1", 700, "succeeded", "ch_1")
    failed = Reversal(Kind.REFUND, "re_2", 300, "failed", "ch_1")

    assert reversals.held_cents({"ch_1": unnamed}) == 1_000
    assert reversals.held_cents({"ch_1": unnamed, "re_1": named}) == 1_000
    assert reversals.held_cents({"ch_1": unnamed, "re_1": named, "re_2": failed}) == 700


def test_a_refund_that_names_no_charge_is_not_counted_twice() -> None:
    """Stripe's refund.charge may be null: that refund's money is part of a charge's refunded
    amount all the same."""
    unnamed = Reversal(Kind.UNNAMED, "ch_1", 500, "refunded", "ch_1")
    chargeless = Reversal(Kind.REFUND, "re_1", 500, "succeeded", None)
    more = Reversal(Kind.UNNAMED, "ch_1", 800, "refunded", "ch_1")

    assert reversals.held_cents({"re_1": chargeless}) == 500
    assert reversals.held_cents({"ch_1": unnamed, "re_1": chargeless}) == 500
    assert reversals.held_cents({"ch_1": more, "re_1": chargeless}) == 800


def test_keys_name_the_refund_or_dispute_and_its_change() -> None:
    re_ = refund(PI, 400, "succeeded", "re_k")
    listed = charge(PI, CENTS, 400, [re_])
    before = reversals.fold({}, reversals.observe("charge.refunded", listed))
    failed = reversals.fold(
        before, reversals.observe("charge.refund.updated", {**re_, "status": "failed"})
    )
    won = reversals.observe("charge.dispute.closed", dispute(PI, 200, "won", dispute_id="dp_k"))

    assert [key for key, _ in reversals.changes({}, before)] == ["re_k", f"ch_{PI}:unnamed:400"]
    assert [key for key, _ in reversals.changes(before, failed)] == ["re_k:reinstated"]
    assert [key for key, _ in reversals.changes({}, reversals.fold({}, won))] == ["dp_k:reinstated"]


def test_an_event_without_its_money_is_malformed() -> None:
    broken = {k: v for k, v in refund(PI, 100).items() if k != "amount"}

    with pytest.raises(reversals.MalformedReversal, match="no valid amount"):
        reversals.observe("refund.updated", broken)
