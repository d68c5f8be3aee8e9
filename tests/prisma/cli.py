"""The real Prisma CLI (npm `prisma`, pinned), in throwaway workspaces, and the schemas it reads.

`prisma()` installs the CLI once into a cache folder (npm's own cache makes later installs work
offline) and every workspace links to it. A workspace is a folder with `prisma.config.ts`,
`schema.prisma` and `migrations/`, as in the platform's repository.
"""

import os
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from sqlalchemy import make_url

from metering.ops.settings import to_asyncpg_url
from tests.factories import SERVER_URL

PRISMA_VERSION = "6.19.3"
HERE = Path(__file__).parent
REPO = HERE.parents[1]
PLATFORM_SCHEMA = HERE / "platform.prisma"
FRAGMENT = REPO / "prisma" / "metering.prisma"
OUR_MIGRATIONS = REPO / "prisma" / "migrations"
PLATFORM_MIGRATION = "20261120000000_add_billing_system"
CACHE = Path(
    os.environ.get(
        "METERING_PRISMA_DIR",
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "metering"
        / f"prisma-{PRISMA_VERSION}",
    )
)
_BLOCK = re.compile(r"^(model|enum|view|type)\s+(\w+)\s*\{\s*$")


@cache
def prisma() -> Path:
    """The installed CLI's `node_modules` (installed on first use, atomically)."""
    modules = CACHE / "node_modules"
    if not (modules / ".bin" / "prisma").exists():
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{CACHE.name}.", dir=CACHE.parent))
        subprocess.run(
            [
                "npm",
                "install",
                "--prefix",
                str(staging),
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--prefer-offline",
                f"prisma@{PRISMA_VERSION}",
                f"@prisma/adapter-pg@{PRISMA_VERSION}",
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
        try:
            staging.rename(CACHE)
        except OSError:  # another run installed it first
            shutil.rmtree(staging, ignore_errors=True)
    return modules


def merge(base: str, fragment: str) -> str:
    """`base` with the fragment's blocks: lines added to its models, new models appended.

    What a platform developer does by hand with prisma/metering.prisma.
    """
    lines = base.splitlines()
    appended: list[str] = []
    fragment_lines = fragment.splitlines()
    index = 0
    while index < len(fragment_lines):
        match = _BLOCK.match(fragment_lines[index])
        if match is None:
            index += 1
            continue
        end = fragment_lines.index("}", index)
        body = fragment_lines[index + 1 : end]
        opening = next(
            (
                i
                for i, line in enumerate(lines)
                if (m := _BLOCK.match(line)) and m.group(2) == match.group(2)
            ),
            None,
        )
        if opening is None:
            appended += ["", *fragment_lines[index : end + 1]]
        else:
            closing = lines.index("}", opening)
            lines[closing:closing] = body
        index = end + 1
    return "\n".join([*lines, *appended]) + "\n"


@cache
def billing_sql() -> str:
    """What Prisma creates for the platform's billing schema from an empty database."""
    with tempfile.TemporaryDirectory() as root:
        # The CLI connects through the adapter even for a diff of datamodels: any database will do.
        workspace = Workspace(Path(root), SERVER_URL)
        return workspace.sql("--from-empty", "--to-schema-datamodel", "schema.prisma")


def _named(line: str) -> str | None:
    match = _BLOCK.match(line)
    return match.group(2) if match else None


def merged_schema() -> str:
    """The platform's schema with our fragment: what its schema.prisma is once adopted."""
    return merge(PLATFORM_SCHEMA.read_text(), FRAGMENT.read_text())


def our_migrations() -> list[Path]:
    return sorted(path for path in OUR_MIGRATIONS.iterdir() if path.is_dir())


class Workspace:
    """A folder laid out like the platform's prisma/ folder, and the CLI run in it."""

    def __init__(self, root: Path, database_url: str) -> None:
        self.root = root
        self.database_url = _plain_url(database_url)
        (root / "node_modules").symlink_to(prisma(), target_is_directory=True)
        shutil.copy(HERE / "prisma.config.ts", root / "prisma.config.ts")
        (root / "migrations").mkdir()
        (root / "migrations" / "migration_lock.toml").write_text('provider = "postgresql"\n')
        self.write("schema.prisma", PLATFORM_SCHEMA.read_text())

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def add_migration(self, name: str, sql: str) -> None:
        self.write(f"migrations/{name}/migration.sql", sql)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`prisma ARGS...` in this workspace, against its database; never raises on failure."""
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(self.root)),
            "DATABASE_URL": self.database_url,
            "CHECKPOINT_DISABLE": "1",
            "PRISMA_HIDE_UPDATE_MESSAGE": "1",
            # Prisma Client's engine: the query compiler, so the CLI fetches no native library.
            "PRISMA_CLIENT_ENGINE_TYPE": "client",
            "NO_COLOR": "1",
        }
        return subprocess.run(
            [str(self.root / "node_modules" / ".bin" / "prisma"), *args],
            cwd=self.root,
            env=environment,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    def sql(self, *args: str) -> str:
        """The SQL script of `prisma migrate diff ARGS... --script`."""
        output = self.root / "diff.sql"
        result = self.run("migrate", "diff", *args, "--script", "--output", str(output))
        assert result.returncode == 0, result.stdout + result.stderr
        return output.read_text()


def _plain_url(database_url: str) -> str:
    """A `postgresql://` URL as Prisma and node-postgres read it (no driver, no query)."""
    url = make_url(to_asyncpg_url(database_url))
    return url.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
