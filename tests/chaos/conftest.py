"""The chaos suite: real workers, beat, PostgreSQL and Redis, with faults injected from outside.

Cases on the machine's shared servers only kill our own processes and backends; cases that pause,
kill or restart a server run their own private one (`tests.chaos.services`).
"""

from collections.abc import Iterator

import pytest

from tests.chaos.helpers import WORKER_ENV
from tests.chaos.services import running_beat

pytestmark = pytest.mark.slow


@pytest.fixture(scope="package")
def beat(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`celery beat` for this run's streams on the shared Redis: drains and reclaims each second."""
    with running_beat(WORKER_ENV, tmp_path_factory.mktemp("beat")):
        yield
