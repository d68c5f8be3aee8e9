"""The Procfile and docker-compose.yml run the processes `metering dev` runs (`dev.stack.STACK`):
the same names, the web app, and each Celery process's app, subcommand, queue and node name."""

import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from metering.dev.stack import CELERY_APP, STACK, WEB_APP, StackProcess

REPO = Path(__file__).parents[2]
RELEASE = "release"
"""The one-off step before the stack starts: in both files, not a process of `metering dev`."""


def procfile() -> dict[str, list[str]]:
    commands = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.strip():
            name, command = line.split(":", 1)
            commands[name] = shlex.split(command)
    return commands


def compose() -> dict[str, list[str]]:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    commands = {}
    for name, service in services.items():
        command = service.get("command")
        if "build" not in service or command is None:
            continue  # PostgreSQL and Redis: images of their own
        commands[name] = shlex.split(command[2]) if command[:2] == ["sh", "-c"] else command
    return commands


def runs(process: StackProcess, command: list[str]) -> bool:
    """Whether `command` runs `process`: uvicorn on the web app, or `celery -A <app>` with the
    process's Celery arguments in their order (other arguments may come between)."""
    if not process.celery_args:
        return command[command.index("uvicorn") + 1] == WEB_APP
    start = command.index("celery")
    if command[start + 1 : start + 3] != ["-A", CELERY_APP]:
        return False
    rest = iter(command[start + 3 :])
    return all(arg in rest for arg in process.celery_args)


@pytest.mark.parametrize(("source", "read"), [("Procfile", procfile), ("compose", compose)])
def test_each_file_runs_the_stack_of_metering_dev(
    source: str, read: Callable[[], dict[str, list[str]]]
) -> None:
    commands = read()
    assert set(commands) - {RELEASE} == {process.name for process in STACK}, source
    for process in STACK:
        assert runs(process, commands[process.name]), (source, process.name)


def test_a_process_that_drifts_is_caught() -> None:
    worker = next(process for process in STACK if process.name == "worker")
    command = procfile()["worker"]

    assert runs(worker, command)
    assert not runs(worker, [arg.replace("usage", "stripe") for arg in command])
    assert not runs(worker, [arg.replace(CELERY_APP, "metering.elsewhere") for arg in command])


def test_compose_healthchecks_ping_the_worker_node_names() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for process in STACK:
        if "-n" not in process.celery_args:
            continue
        node = process.celery_args[process.celery_args.index("-n") + 1].split("@")[0]
        check = services[process.name]["healthcheck"]["test"][1]
        assert f"celery -A {CELERY_APP} inspect ping -d {node}@" in check, process.name
