"""The `metering` command line: each module registers its commands on the shared app.

Modules are imported when their command runs (see `metering.cli.app`), so that the command starts
fast; `load_all` imports every one of them.
"""

import sys

from metering.cli.app import COMMANDS, app, load
from metering.cli.common import operator_error, print_error

__all__ = ["app", "load_all", "main"]


def load_all() -> None:
    """Import every command module (for tests and tools that want the whole app at once)."""
    for module, _ in COMMANDS.values():
        load(module)


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
