"""The exactly-once window of usage: how old an event may be and still be charged.

An event id is charged at most once as long as every delivery of it arrives within the window
after its `occurred_at`: its call record is kept at least that long. An older event is refused
(dead-lettered with reason `outside_window`), so call records older than the window can be
archived and deleted without letting a late retry be charged again. Pure: no clock, no I/O.
"""

from datetime import datetime, timedelta

OUTSIDE_WINDOW = "outside_window"
"""The dead-letter reason of an event older than the window."""


def window_start(now: datetime, window_days: int) -> datetime:
    """The oldest `occurred_at` still inside the window at `now`."""
    if window_days < 1:
        raise ValueError(f"the window is at least one day, not {window_days}")
    return now - timedelta(days=window_days)


def outside_window(occurred_at: datetime, now: datetime, window_days: int) -> bool:
    """True when an event that occurred at `occurred_at` is too old to be charged at `now`.

    Both times aware, or both naive UTC. The window's first instant is still inside it.
    """
    return occurred_at < window_start(now, window_days)
