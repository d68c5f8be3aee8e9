"""The carry invariant: credits charged call by call sum to ceil(exact total cost)."""

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from metering.pricing import TokenUsage, charge_exact_credits, get_catalog
from metering.pricing.money import credits_due, whole_credits

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def exact_credits(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    usage = TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens)
    cost = get_catalog().price_call("openai", model, usage, NOW)
    return charge_exact_credits(cost, "system", Decimal("1.1"), Decimal(0))


def charge_all(exact_costs: list[Decimal]) -> tuple[int, Decimal]:
    """Charge each call as the ledger does; return the credits charged and the exact total."""
    charged, total = 0, Decimal(0)
    for exact in exact_costs:
        due = credits_due(total, exact)
        assert due >= 0
        charged += due
        total += exact
    return charged, total


def test_a_million_tiny_calls_are_charged_exactly_the_rounded_up_total() -> None:
    # 97 distinct small calls (0.03 to 0.2 credits each), cycled to a million calls.
    shapes = [exact_credits("gpt-4o-mini", 150 + 7 * i, 20 + 3 * i) for i in range(97)]
    calls = [shapes[i % 97] for i in range(1_000_000)]
    charged, total = charge_all(calls)
    assert total == sum(calls, Decimal(0))
    assert charged == whole_credits(total)
    assert charged < total + 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["gpt-4o-mini", "gpt-4.1-nano", "gpt-5-nano", "o3"]),
            st.integers(min_value=0, max_value=5_000),
            st.integers(min_value=0, max_value=2_000),
        ),
        max_size=500,
    )
)
def test_any_sequence_of_calls_is_charged_the_rounded_up_total(
    calls: list[tuple[str, int, int]],
) -> None:
    exact_costs = [exact_credits(model, inp, out) for model, inp, out in calls]
    charged, total = charge_all(exact_costs)
    assert charged == whole_credits(total)
    assert 0 <= charged - total < 1
