"""The `metering` command line: each module registers its commands on the shared app."""

from metering.cli import bench, database, ledger, metrics, pipeline, pricing, reports, stack, stripe
from metering.cli.app import app

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
    app()
