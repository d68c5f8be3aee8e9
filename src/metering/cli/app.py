"""The `metering` command's Typer application; each module of this package adds its commands."""

import typer

app = typer.Typer(
    name="metering",
    help="Meter LLM token usage and bill it against prepaid credits.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
