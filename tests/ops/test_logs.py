"""Logs are one JSON object per line, correlated, and never carry a secret or card number."""

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from metering.ops.logs import configure_logging, get_logger, redact


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    yield stream
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_structured_lines_carry_the_bound_correlation_ids(
    json_logs: io.StringIO,
) -> None:
    structlog.contextvars.bind_contextvars(task_id="task-1")
    get_logger("metering.test").info("batch charged", event_id="evt-1", credits=3)
    logging.getLogger("celery.worker").warning("from the standard library")
    charged, foreign = lines(json_logs)
    assert charged["event"] == "batch charged"
    assert charged["event_id"] == "evt-1"
    assert charged["task_id"] == "task-1"
    assert foreign["logger"] == "celery.worker"
    assert foreign["task_id"] == "task-1"


def test_secrets_and_card_numbers_are_masked(json_logs: io.StringIO) -> None:
    get_logger("metering.test").error(
        "stripe call failed with key sk_live_51Habc and whsec_q1w2e3",
        stripe_secret_key="sk_test_123",
        headers={"Authorization": "Bearer abc.def", "Accept": "json"},
        database_url="postgresql://app:hunter2@db:5432/platform",
        note="card 4242 4242 4242 4242 declined",
    )
    output = json_logs.getvalue()
    for secret in (
        "sk_live_51Habc",
        "whsec_q1w2e3",
        "sk_test_123",
        "abc.def",
        "hunter2",
        "4242 4242",
    ):
        assert secret not in output
    (line,) = [json.loads(text) for text in output.splitlines()]
    assert line["headers"] == {"Authorization": "[redacted]", "Accept": "json"}
    assert line["database_url"] == "postgresql://[redacted]@db:5432/platform"


def test_ordinary_values_pass_untouched() -> None:
    record = {"event_id": "evt_1PgafyB7WZ01zgkW", "credits": 12, "model": "gpt-4o"}
    assert redact(record) == record
