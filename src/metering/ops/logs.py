"""Structured logs: one JSON object per line, correlated by event id and Celery task id.

Secrets and card data never reach a log line: a redaction step masks Stripe keys, webhook
secrets, bearer tokens, card-like numbers, and any field whose name says it holds a secret.
"""

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

SECRET_FIELD = re.compile(r"secret|password|token|authorization|api_?key|signature|card", re.I)
SECRET_VALUE = re.compile(
    r"(?:sk|rk|pk)_(?:test|live)_[A-Za-z0-9]+"  # Stripe API keys
    r"|whsec_[A-Za-z0-9]+"  # Stripe webhook secrets
    r"|Bearer\s+[A-Za-z0-9._~+/=-]+"  # bearer tokens
    r"|\b(?:\d[ -]?){12,18}\d\b"  # card-like numbers (13 to 19 digits)
    r"|(?<=://)[^:/@\s]+:[^@/\s]+(?=@)"  # user:password in URLs
)
REDACTED = "[redacted]"


def redact_text(text: str) -> str:
    """`text` with every secret-looking substring masked."""
    return SECRET_VALUE.sub(REDACTED, text)


def redact(value: Any, field: str = "") -> Any:
    """A copy of `value` safe to log: secret fields masked whole, secret-looking text masked."""
    if field and SECRET_FIELD.search(field):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: redact(item, str(key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


def _redact_event(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return {
        key: (
            redact_text(value) if key == "event" and isinstance(value, str) else redact(value, key)
        )
        for key, value in event.items()
    }


def configure_logging(
    level: str = "INFO", *, json: bool = True, stream: TextIO | None = None
) -> None:
    """Route structlog and the standard library (Celery, uvicorn) through one JSON renderer."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redact_event,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
