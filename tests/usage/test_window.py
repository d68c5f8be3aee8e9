"""The exactly-once window: which events are too old to be charged."""

from datetime import UTC, datetime, timedelta

import pytest

from metering.usage.window import OUTSIDE_WINDOW, outside_window

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)


def test_the_window_first_instant_is_inside_and_anything_older_outside() -> None:
    start = NOW - timedelta(days=35)
    assert not outside_window(start, NOW, 35)
    assert not outside_window(NOW, NOW, 35)
    assert outside_window(start - timedelta(milliseconds=1), NOW, 35)
    assert outside_window(start, NOW, 34) is True
    assert outside_window(start, NOW, 36) is False
    assert outside_window(NOW - timedelta(days=2), NOW, 1)
    assert OUTSIDE_WINDOW == "outside_window"


def test_a_window_shorter_than_a_day_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one day"):
        outside_window(NOW, NOW, 0)
