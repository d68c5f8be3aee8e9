"""The stack's long-running processes, listed once. `metering dev` runs this list; a test holds
the Procfile and docker-compose.yml to it (process names, the Celery app, queues, node names)."""

from dataclasses import dataclass
from typing import Final

CELERY_APP: Final = "metering.tasks.app"
WEB_APP: Final = "metering.web:app"
"""The ASGI app, as uvicorn names it."""


@dataclass(frozen=True)
class StackProcess:
    """A process's name in the Procfile and docker-compose.yml and, for a Celery process, the
    `celery` subcommand and the arguments that every way of running it shares."""

    name: str
    celery_args: tuple[str, ...] = ()


STACK: Final = (
    StackProcess("web"),
    StackProcess("worker", ("worker", "-Q", "usage", "-n", "usage@%h")),
    StackProcess("stripe_worker", ("worker", "-Q", "stripe", "-n", "stripe@%h")),
    StackProcess("beat", ("beat",)),
    StackProcess("flower", ("flower",)),
)
