"""The `metering` command's Typer application; each module of this package adds its commands.

A command's module is imported only when that command runs: `metering --help` lists the commands
from `COMMANDS` without importing any of them, and `metering price` loads the pricing module
alone, not SQLAlchemy, Redis, Alembic or the web app. tests/test_cli_startup.py proves that
`COMMANDS` lists exactly what the modules register, with the same help.
"""

import importlib
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module of metering.cli that registers it, its line in `metering --help`)
    "bench": (
        "bench",
        "Measure the pipeline end to end (real beat and usage workers) against the ceiling (the\n"
        "same rows written by one process, no Redis, no Celery) and the naive design (one Celery "
        "task\nand one transaction per event), check every event was charged exactly once, and "
        "report.",
    ),
    "seed": (
        "ledger",
        "Create the seed's test user (test@example.com) with 10,000 credits. Safe to run again.",
    ),
    "reconcile": (
        "ledger",
        "Check every balance against its transactions; exit 1 if any invariant is broken.",
    ),
    "balance": ("ledger", "Show a user's credit balance."),
    "refund": (
        "ledger",
        "Give credits back to an experiment's owner (a REFUND transaction), once per key.",
    ),
    "adjust": ("ledger", "Correct a user's balance (an ADJUSTMENT transaction), once per key."),
    "grant": (
        "grants",
        "Give a user credits that expire (a grant, drawn before purchased credits), once per key.",
    ),
    "dev": (
        "stack",
        "Run everything locally until Ctrl-C: services, migrations, web, workers, beat, Flower.",
    ),
    "emit": ("pipeline", "Publish one usage event to its experiment's usage stream."),
    "status": (
        "pipeline",
        "Each usage stream's length, pending entries and lag; dead letters; live workers.",
    ),
    "demo": (
        "pipeline",
        "Run the pipeline end to end: a simulated experiment runner emits usage across providers\n"
        "and models (with a retried duplicate and a malformed event), a worker charges it, and "
        "the\nsummary shows what was charged, the balances, the dead letters and the reconcile "
        "result.",
    ),
    "prices": (
        "pricing",
        "List USD per million tokens for every model, or import a peer's price list.",
    ),
    "price": (
        "pricing",
        "Price one call: exact USD and exact (fractional) credits, with the prices used.",
    ),
    "usage": (
        "reports",
        "Usage of a user or an experiment by provider, model or day: calls, tokens, cost, credits.",
    ),
    "transactions": ("reports", "A user's ledger rows, newest first."),
    "db": ("database", "Apply or roll back database migrations."),
    "calls": ("calls", "Call records: archive those older than the exactly-once window."),
    "metrics": ("metrics", "Prometheus metrics of this host."),
    "dlq": ("pipeline", "Dead letters: usage entries that could not be charged."),
    "stripe": ("stripe", "Stripe webhook events: inspect and replay."),
}


class LazyGroup(TyperGroup):
    """The root group: lists `COMMANDS`, imports a command's module when it is invoked."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*COMMANDS, *(name for name in self.commands if name not in COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name in COMMANDS:  # for the listing only: resolve_command loads the real one
            return TyperCommand(cmd_name, help=COMMANDS[cmd_name][1])
        return None

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] in COMMANDS and args[0] not in self.commands:
            load(COMMANDS[args[0]][0])
            self.commands.update(
                (name, command)
                for name, command in typer.main.get_group(app).commands.items()
                if name not in self.commands
            )
        return super().resolve_command(ctx, args)


def load(module: str) -> None:
    """Import `metering.cli.<module>`, which registers its commands on `app`."""
    importlib.import_module(f"metering.cli.{module}")


app = typer.Typer(
    name="metering",
    help="Meter LLM token usage and bill it against prepaid credits.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=LazyGroup,
)


@app.callback()
def _root() -> None:
    # A callback makes `app` a group even before any command's module is imported.
    pass
