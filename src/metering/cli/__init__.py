"""The `metering` command line: each module registers its commands on the shared app."""

import sys

from metering.cli import bench, database, ledger, metrics, pipeline, pricing, reports, stack, stripe
from metering.cli.app import app
from metering.cli.common import operator_error, print_error

__all__ = [
    "app",
    "bench",
    "database",
    "ledger",
    "main",
    "metrics",
    "pipeline",
    "pricing",
    "reports",
    "stack",
    "stripe",
]


def main() -> None:
    """The `metering` command: an operator's mistake is one line on stderr and exit status 2."""
    try:
        app()
    except Exception as error:
        message = operator_error(error)
        if message is None:
            raise
        print_error(message)
        sys.exit(2)
