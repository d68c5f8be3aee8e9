"""Where a phase's CPU went: seconds used by the workers, PostgreSQL, Redis and the benchmark.

Each group is a set of root processes; a root's time is its own, that of its children it has
reaped (`children_user`, `children_system`: a PostgreSQL backend or a pool child that exited) and
that of its live descendants. The difference of two readings is the phase's use, and divided by
the phase's wall time, the cores it kept busy: 2.0 on this 2-CPU machine means saturated.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psutil

Meter = Callable[[], float]
"""CPU seconds a group has used so far."""


def tree_seconds(root: psutil.Process) -> float:
    """A process's CPU seconds with those of its descendants, live or reaped."""
    try:
        times = root.cpu_times()
        total = float(times.user + times.system + times.children_user + times.children_system)
        descendants = root.children(recursive=True)
    except psutil.Error:
        return 0.0  # gone: its time was counted by its parent, or is lost with it
    for process in descendants:
        try:
            own = process.cpu_times()
        except psutil.Error:
            continue
        total += own.user + own.system
    return total


def _named(name: str) -> list[psutil.Process]:
    """The processes called `name` whose parent is not: the server's root processes."""
    found = []
    for process in psutil.process_iter(["name", "ppid"]):
        if process.info["name"] != name:
            continue
        try:
            parent = psutil.Process(process.info["ppid"])
            if parent.name() != name:
                found.append(process)
        except psutil.Error:
            found.append(process)
    return found


def postgres() -> float:
    return sum(map(tree_seconds, _named("postgres")))


def redis() -> float:
    return sum(map(tree_seconds, _named("redis-server")))


def this_process() -> float:
    """This process's own threads (the workers it started are a group of their own)."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


@dataclass(frozen=True)
class Reading:
    wall_s: float
    seconds: Mapping[str, float]


def read(groups: Mapping[str, Meter], wall_s: float) -> Reading:
    """CPU seconds used so far by each group."""
    return Reading(wall_s, {name: meter() for name, meter in groups.items()})


def figures(before: Reading, after: Reading, events: int) -> dict[str, object]:
    """Seconds, microseconds per event and cores kept busy, per group and in all."""
    used = {name: max(0.0, after.seconds[name] - before.seconds[name]) for name in after.seconds}
    wall = after.wall_s - before.wall_s
    total = sum(used.values())
    return {
        "seconds": {name: round(s, 3) for name, s in used.items()} | {"total": round(total, 3)},
        "us_per_event": {name: round(s / events * 1e6, 1) for name, s in used.items()}
        | {"total": round(total / events * 1e6, 1)},
        "cores_busy": round(total / wall, 2) if wall > 0 else None,
        "cpus": psutil.cpu_count(),
    }
