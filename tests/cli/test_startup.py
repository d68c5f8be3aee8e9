"""The `metering` command starts without what it does not use.

`metering --help` lists the commands without importing their modules, and `metering price`
imports the pricing module alone: neither loads SQLAlchemy, Alembic, Redis, Celery, the web app,
the benchmark or pydantic-settings (with the asyncio it imports). Pricing one call loads no rich
either (it prints with typer), and the listing no pydantic. The listing is the one the modules'
own help gives.
"""

import json
import subprocess
import sys

import pytest

HEAVY = (
    "sqlalchemy",
    "alembic",
    "asyncpg",
    "redis",
    "celery",
    "kombu",
    "fastapi",
    "uvicorn",
    "pydantic_settings",
    "asyncio",
)

PRICE = (
    "price",
    "--provider",
    "openai",
    "--model",
    "gpt-4o-mini",
    "--input-tokens",
    "1000",
    "--output-tokens",
    "500",
)


def python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "160", "TERMINAL_WIDTH": "160"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


LOADED_AFTER = """
import json, sys
from metering.cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("args", "also_unused"),
    [(("--help",), ("pydantic",)), (PRICE, ("rich",)), (("price", "--help"), ())],
)
def test_the_command_loads_no_heavy_library(
    args: tuple[str, ...], also_unused: tuple[str, ...]
) -> None:
    result = python(LOADED_AFTER, *args)
    loaded = json.loads(result.stderr.strip().splitlines()[-1])
    assert result.stdout.strip(), result.stderr
    unused = (*HEAVY, *also_unused)
    heavy = [m for m in loaded if m.split(".")[0] in unused or m.startswith("metering.bench")]
    assert heavy == []
    others = {m for m in loaded if m.startswith("metering.cli.")} - {
        "metering.cli.app",
        "metering.cli.common",
    }
    assert others <= {"metering.cli.pricing"}


def test_the_listing_is_what_the_modules_register() -> None:
    lazy = python("from metering.cli import main; main()", "--help")
    eager = python("from metering.cli import load_all, main; load_all(); main()", "--help")
    assert lazy.returncode == eager.returncode == 0, lazy.stderr + eager.stderr
    assert lazy.stdout == eager.stdout, (
        "metering.cli.app.COMMANDS differs from the commands the modules register"
    )


def test_every_command_still_runs_from_the_listing() -> None:
    for name in ("db", "dlq", "stripe", "metrics", "bench", "dev"):
        result = python("from metering.cli import main; main()", name, "--help")
        assert result.returncode == 0, result.stderr
        assert "Usage: " in result.stdout
