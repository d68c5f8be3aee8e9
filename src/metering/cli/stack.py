"""`metering dev`: the whole stack in one process group, on embedded services when none are set."""

import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from sqlalchemy import make_url

from metering.cli.app import app
from metering.cli.common import console, in_database, run
from metering.dev.embedded import DEFAULT_DATA_DIR, Services, local_services
from metering.dev.processes import ProcessGroup, celery_command
from metering.dev.stack import STACK, WEB_APP
from metering.ledger import accounts
from metering.ops import migrate
from metering.ops.settings import get_settings, to_asyncpg_url

DATA_DIR = typer.Option(DEFAULT_DATA_DIR, help="Folder of the embedded services' data.")


@contextmanager
def local_stack(data_dir: Path, *, reset: bool = False) -> Iterator[Services]:
    """The configured services, or embedded ones; says which, and points this process at them."""
    with local_services(get_settings(), data_dir, reset=reset) as services:
        if services.embedded:
            console.print(
                f"using embedded PostgreSQL and Redis (no DATABASE_URL and REDIS_URL set); "
                f"data in {services.data_dir}",
                highlight=False,
            )
            os.environ.update(services.environment())
            get_settings.cache_clear()
        else:
            database = make_url(to_asyncpg_url(services.database_url))
            console.print(
                f"using PostgreSQL {database.render_as_string(hide_password=True)} and Redis "
                f"{services.redis_url.split('@')[-1]} (from DATABASE_URL and REDIS_URL)",
                highlight=False,
            )
        yield services


def prepare_database() -> None:
    """Create, migrate and seed the configured database."""
    url = get_settings().database_url

    async def create() -> None:
        await migrate.ensure_database(url)
        await migrate.upgrade_async(url)

    run(create)
    in_database(accounts.seed)


@app.command()
def dev(
    data_dir: Path = DATA_DIR,
    reset: bool = typer.Option(False, "--reset", help="Start the embedded services afresh."),
    port: int = typer.Option(8000, help="Port of the web app (on 127.0.0.1)."),
    flower_port: int = typer.Option(5555, help="Port of Flower (on 127.0.0.1)."),
) -> None:
    """Run everything locally until Ctrl-C: services, migrations, web, workers, beat, Flower."""
    with local_stack(data_dir, reset=reset) as services:
        prepare_database()
        flower_auth = get_settings().flower_basic_auth.get_secret_value()
        if not flower_auth:
            flower_auth = f"metering:{secrets.token_urlsafe(12)}"
            console.print(f"Flower basic auth (FLOWER_BASIC_AUTH not set): {flower_auth}")
        state_dir = services.data_dir or Path(tempfile.mkdtemp(prefix="metering-dev-"))
        # Every process of this stack writes its metrics here; web's /metrics adds them up.
        metrics_dir = state_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        environment = {
            **services.environment(),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            # Flower reads this itself: no credentials on a command line (ps shows those).
            "FLOWER_BASIC_AUTH": flower_auth,
        }
        group = ProcessGroup(echo=sys.stdout)
        # What this machine adds to the arguments every way of running the stack shares.
        local_args = {
            "worker": ("-c", "2"),
            "stripe_worker": ("-c", "1"),
            "beat": ("-s", str(state_dir / "beat-schedule")),
            "flower": ("--address=127.0.0.1", f"--port={flower_port}"),
        }
        web = [sys.executable, "-m", "uvicorn", WEB_APP, "--host", "127.0.0.1", "--port", str(port)]
        try:
            for process in STACK:
                extra = local_args.get(process.name, ())
                group.start(
                    process.name,
                    celery_command(*process.celery_args, *extra) if process.celery_args else web,
                    environment,
                )
            console.print(
                f"web on http://127.0.0.1:{port}, Flower on http://127.0.0.1:{flower_port}; "
                "Ctrl-C stops everything"
            )
            exited = group.wait()
            console.print(f"{exited.name} exited with status {exited.process.returncode}: stopping")
            raise typer.Exit(1)
        except KeyboardInterrupt:
            console.print("stopping")
        finally:
            group.stop()
            if services.data_dir is None:
                shutil.rmtree(state_dir, ignore_errors=True)
