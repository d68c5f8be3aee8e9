"""Time-of-day prices: a window's rates apply from its start (inclusive) to its end (exclusive),
UTC, on its days; a window may cross midnight."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from metering.pricing import CatalogError, TokenUsage, get_catalog, load_catalog
from tests.pricing.helpers import MINIMAL

MILLION = TokenUsage(input_tokens=1_000_000, output_tokens=0)
WINDOWS = (
    MINIMAL
    + """
[[providers.acme.models.prices.time_of_day]]
start = 22:30:00
end = 02:00:00
input = "0.25"
output = "1.00"
[[providers.acme.models.prices.time_of_day]]
start = 09:00:00
end = 12:00:00
days = ["mon", "tue", "wed", "thu", "fri"]
input = "2.00"
output = "8.00"
"""
)
# 2025-03-03 is a Monday; 2025-03-08 a Saturday.


@pytest.fixture
def price_at(write_catalog: Callable[[str], Path]) -> Callable[[datetime], Decimal]:
    catalog = load_catalog(write_catalog(WINDOWS))
    return lambda at: catalog.price_call("acme", "thinker-1", MILLION, at).usd


@pytest.mark.parametrize(
    ("at", "usd"),
    [
        (datetime(2025, 3, 3, 22, 29, 59, 999999, tzinfo=UTC), "1.00"),
        (datetime(2025, 3, 3, 22, 30, tzinfo=UTC), "0.25"),
        (datetime(2025, 3, 3, 23, 59, 59, tzinfo=UTC), "0.25"),
        (datetime(2025, 3, 4, 0, 0, tzinfo=UTC), "0.25"),
        (datetime(2025, 3, 4, 1, 59, 59, 999999, tzinfo=UTC), "0.25"),
        (datetime(2025, 3, 4, 2, 0, tzinfo=UTC), "1.00"),
        (datetime(2025, 3, 3, 8, 59, 59, tzinfo=UTC), "1.00"),
        (datetime(2025, 3, 3, 9, 0, tzinfo=UTC), "2.00"),
        (datetime(2025, 3, 3, 11, 59, 59, tzinfo=UTC), "2.00"),
        (datetime(2025, 3, 3, 12, 0, tzinfo=UTC), "1.00"),
        (datetime(2025, 3, 8, 10, 0, tzinfo=UTC), "1.00"),  # Saturday: the weekday window is shut
        (datetime(2025, 3, 8, 23, 0, tzinfo=UTC), "0.25"),  # the daily window opens every day
    ],
)
def test_a_window_applies_from_its_start_to_its_end(
    price_at: Callable[[datetime], Decimal], at: datetime, usd: str
) -> None:
    assert price_at(at) == Decimal(usd)


def test_the_window_is_found_in_utc_whatever_the_offset_of_the_time(
    price_at: Callable[[datetime], Decimal],
) -> None:
    # 10:00 in UTC+14 on Tuesday is 20:00 UTC on Monday: outside both windows.
    kiritimati = timezone(timedelta(hours=14))
    assert price_at(datetime(2025, 3, 4, 10, 0, tzinfo=kiritimati)) == Decimal("1.00")
    # 18:45 in UTC-4 is 22:45 UTC: inside the window that crosses midnight.
    assert price_at(datetime(2025, 3, 3, 18, 45, tzinfo=timezone(timedelta(hours=-4)))) == (
        Decimal("0.25")
    )


def test_the_cost_records_the_rates_of_the_window(write_catalog: Callable[[str], Path]) -> None:
    catalog = load_catalog(write_catalog(WINDOWS))
    cost = catalog.price_call("acme", "thinker-1", MILLION, datetime(2025, 3, 3, 23, tzinfo=UTC))
    assert cost.prices["input"] == "0.25"
    batch = catalog.price_call(
        "acme", "thinker-1", MILLION, datetime(2025, 3, 3, 23, tzinfo=UTC), "batch"
    )
    assert batch.usd == Decimal("0.125")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("end = 02:00:00", "end = 22:30:00"), "different start and end"),
        (("start = 22:30:00", "start = 22:30:00+01:00"), "not valid TOML"),
        (("start = 22:30:00", 'start = "late"'), "ISO 8601 time"),
        (('days = ["mon"', 'days = ["monday"'), "days"),
        (('input = "0.25"', 'input = "0.25"\nabove_prompt_tokens = 5'), "Extra inputs"),
    ],
)
def test_a_bad_window_is_refused_at_load(
    write_catalog: Callable[[str], Path], change: tuple[str, str], reason: str
) -> None:
    old, new = change
    assert old in WINDOWS
    with pytest.raises(CatalogError, match=reason):
        load_catalog(write_catalog(WINDOWS.replace(old, new, 1)))


def test_a_period_cannot_mix_long_context_and_time_of_day(
    write_catalog: Callable[[str], Path],
) -> None:
    text = WINDOWS.replace(
        "[[providers.acme.models.prices.time_of_day]]",
        "[providers.acme.models.prices.long_context]\nabove_prompt_tokens = 10\n"
        'input = "2"\noutput = "8"\n[[providers.acme.models.prices.time_of_day]]',
        1,
    )
    with pytest.raises(CatalogError, match="both long_context and time_of_day"):
        load_catalog(write_catalog(text))


@pytest.mark.parametrize(
    ("at", "usd"),
    [
        # Nightly discount of 2025 (16:30-00:30 UTC): V3 at half price.
        (datetime(2025, 3, 5, 16, 29, 59, tzinfo=UTC), "1.37"),
        (datetime(2025, 3, 5, 16, 30, tzinfo=UTC), "0.685"),
        (datetime(2025, 3, 6, 0, 29, 59, tzinfo=UTC), "0.685"),
        (datetime(2025, 3, 6, 0, 30, tzinfo=UTC), "1.37"),
        # Peak hours since 2026-08-16 (01:00-04:00, 06:00-10:00 UTC); weekends off-peak from 08-23.
        (datetime(2026, 12, 2, 0, 59, 59, tzinfo=UTC), "0.75"),
        (datetime(2026, 12, 2, 1, 0, tzinfo=UTC), "1.50"),
        (datetime(2026, 12, 2, 4, 0, tzinfo=UTC), "0.75"),
        (datetime(2026, 12, 2, 9, 59, 59, tzinfo=UTC), "1.50"),
        (datetime(2026, 12, 2, 10, 0, tzinfo=UTC), "0.75"),
        (datetime(2026, 12, 2, 12, 0, tzinfo=UTC), "0.75"),
        (datetime(2026, 12, 5, 2, 0, tzinfo=UTC), "0.75"),
        (datetime(2026, 8, 22, 2, 0, tzinfo=UTC), "1.76"),
    ],
)
def test_deepseek_off_peak_hours(at: datetime, usd: str) -> None:
    # 1M fresh input and 1M output tokens of deepseek-chat.
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert get_catalog().price_call("deepseek", "deepseek-chat", usage, at).usd == Decimal(usd)


def test_deepseek_off_peak_is_half_the_peak_price_as_its_page_says() -> None:
    usage = TokenUsage(input_tokens=70_000, output_tokens=3_000, cached_input_tokens=900_000)
    for model in ("deepseek-flash", "deepseek-v4-pro"):
        peak = get_catalog().price_call(
            "deepseek", model, usage, datetime(2026, 12, 2, 7, tzinfo=UTC)
        )
        off = get_catalog().price_call(
            "deepseek", model, usage, datetime(2026, 12, 2, 20, tzinfo=UTC)
        )
        assert off.usd * 2 == peak.usd
