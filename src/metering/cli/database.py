"""`metering db upgrade|downgrade`: Alembic migrations of the configured database."""

import typer

from metering.cli.app import app
from metering.cli.common import console, fail, run
from metering.ops import migrate
from metering.ops.db import create_engine
from metering.ops.settings import get_settings

db = typer.Typer(help="Apply or roll back database migrations.", no_args_is_help=True)
app.add_typer(db, name="db")


@db.command()
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Create the database if missing, then migrate it up to REVISION."""
    url = get_settings().database_url

    async def main() -> None:
        if await migrate.ensure_database(url):
            console.print(f"created database {migrate.database_name(url)!r}")

    run(main)
    migrate.upgrade(url, revision)
    console.print(f"database at migration {revision}")


@db.command()
def downgrade(
    revision: str = typer.Argument("-1", help="Target revision (base for none)."),
) -> None:
    """Roll the database back to REVISION (one step by default)."""
    url = get_settings().database_url

    async def main() -> str | None:
        engine = create_engine(url, pool_size=1)
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    if run(main) is None:
        fail(
            f"database {migrate.database_name(url)!r} has no migration to roll back "
            "(`metering db upgrade` migrates it)"
        )
    migrate.downgrade(url, revision)
    console.print(f"database rolled back to {revision}")
