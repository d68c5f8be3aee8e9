"""Where the workers' time goes: py-spy samples of the usage worker, summed two ways.

`record` starts `py-spy record` on a worker and its pool children (collapsed stacks, on-CPU
samples only). `summarize` attributes each sample (a) to the library running at the top of the
stack (pydantic, asyncpg, redis, json, ...) and (b) to the nearest function of ours below it, so
that "SQL" and "which of our steps issued it" are both visible.
"""

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from metering.dev.processes import Child

LIBRARIES = (
    ("(pydantic", "validation (pydantic)"),
    ("(metering/pricing/", "pricing"),
    ("(hashlib", "event digest (sha256)"),
    ("(json/", "JSON (stdlib)"),
    ("(asyncpg/", "SQL driver (asyncpg)"),
    ("(sqlalchemy/", "SQLAlchemy"),
    ("(redis/", "Redis client"),
    ("(kombu/", "Celery and kombu"),
    ("(celery/", "Celery and kombu"),
    ("(billiard/", "Celery and kombu"),
    ("(structlog/", "logging"),
    ("(logging/", "logging"),
    ("(decimal", "Decimal"),
    ("(asyncio/", "asyncio event loop"),
    ("(metering/", "our code"),
)


def record(worker: Child, output: Path) -> subprocess.Popen[bytes]:
    """Sample `worker` and its children until the returned process is interrupted (SIGINT)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(worker.process.pid),
            "--subprocesses",
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(output),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarize(collapsed: Path, top: int = 12) -> dict[str, Any]:
    """Shares of samples (percent) by library at the top of the stack, and by our function."""
    by_library: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        total += count
        by_library[_library(frames)] += count
        by_function[_ours(frames)] += count
    if not total:
        return {"samples": 0}

    def shares(counter: Counter[str]) -> dict[str, float]:
        return {name: round(100 * n / total, 1) for name, n in counter.most_common(top)}

    return {
        "samples": total,
        "by_library_percent": shares(by_library),
        "by_our_function_percent": shares(by_function),
    }


def _library(frames: list[str]) -> str:
    for frame in reversed(frames):
        for marker, name in LIBRARIES:
            if marker in frame:
                return name
    return "other"


def _ours(frames: list[str]) -> str:
    """The innermost frame in our package (the benchmark included): `module.function`."""
    for frame in reversed(frames):
        function, _, place = frame.partition(" (")
        if place.startswith("metering/"):
            module = place.split(":")[0].removesuffix(".py").replace("/", ".")
            return f"{module}.{function}"
    return "(outside our code: Celery, kombu, event loop)"
