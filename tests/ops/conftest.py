"""Operations tests: each module gets its own Redis prefix (streams, flags and Celery's queues),
so counters, stream gauges and alerts are exactly those of the module's own events."""

import uuid

import pytest


@pytest.fixture(scope="module")
def ops_prefix(redis_prefix: str) -> str:
    """A prefix under the run's, so the run's clean-up removes its keys too."""
    return f"{redis_prefix}:ops-{uuid.uuid4().hex[:8]}"
