"""Bounded request parameters: what a path or query value may be, stated in the OpenAPI document.

Anything outside these bounds is refused with 422 before a query runs: PostgreSQL cannot hold NUL
in text, and a time whose offset moves it past year 1 or 9999 has no UTC equivalent.
"""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Path
from pydantic import AfterValidator

MAX_USER_KEY = 320
"""Characters of a user id or email (an email address is at most 320)."""
MAX_EXPERIMENT_ID = 128
"""Characters of an experiment id: what a usage event may name (`usage.event.Identifier`)."""

UserKey = Annotated[
    str,
    Path(
        description="The user's id or email: 1 to 320 characters, no control characters.",
        min_length=1,
        max_length=MAX_USER_KEY,
        pattern=r"^[^\x00-\x1f\x7f]+$",
    ),
]
ExperimentId = Annotated[
    str,
    Path(
        description="1 to 128 printable ASCII characters without spaces.",
        min_length=1,
        max_length=MAX_EXPERIMENT_ID,
        pattern=r"^[\x21-\x7e]+$",
    ),
]


def in_utc(moment: datetime) -> datetime:
    """`moment` in UTC (naive: taken as UTC); `ValueError` when UTC would leave years 1..9999."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is outside years 1 to 9999 once in UTC") from None


UtcDatetime = Annotated[datetime, AfterValidator(in_utc)]
"""RFC 3339; UTC if no offset; within years 1 to 9999 once in UTC."""
