"""Child processes: started in their own session, watched, and stopped with all they forked.

The one supervisor of `metering dev`, `metering demo`, the benchmark and the tests that run real
workers. Each child runs in its own session (process group), so stopping it also stops what it
forked (Celery's pool children, uvicorn's reloader). Its output can be echoed line by line with
its name in front, and its last lines kept for error messages; a start can wait for a line that
says the child is ready.
"""

# Not honcho: its Manager runs all until one exits, with no ready line, kept output or lone stop.

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from metering.dev.stack import CELERY_APP, STACK

if TYPE_CHECKING:
    import psutil

STOP_GRACE_S = 20.0
READY_TIMEOUT_S = 90.0
READER_JOIN_S = 10.0
NAME_WIDTH = max(len(process.name) for process in STACK)


def celery_command(*args: str, app: str = CELERY_APP) -> list[str]:
    """`celery -A APP ARGS...` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", app, *args]


@dataclass
class Child:
    """A started child; `log` holds the last lines of its output that were asked to be kept."""

    name: str
    process: subprocess.Popen[str]
    log: deque[str]
    ready: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    def tail(self, lines: int = 40) -> str:
        return "".join(list(self.log)[-lines:])

    def tree(self) -> "list[psutil.Process]":
        """The process and its descendants (a Celery worker and its pool children)."""
        import psutil  # an extra (bench, embedded): only the callers that need it load it

        try:
            main = psutil.Process(self.process.pid)
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the child's process group, SIGKILL it after `grace_s`."""
        self.terminate()
        self.finish(time.monotonic() + grace_s)

    def kill(self) -> None:
        """SIGKILL the whole process group at once, as a crash would."""
        self.finish(time.monotonic())

    def terminate(self) -> None:
        _signal_group(self.process, signal.SIGTERM)

    def finish(self, deadline: float) -> None:
        """Wait for the child until `deadline`, then SIGKILL its group and close its output."""
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(self.process, signal.SIGKILL)
            self.process.wait()
        # Pool children may outlive their parent for a moment: make sure the group is gone.
        _signal_group(self.process, signal.SIGKILL)
        if self.reader is not None:
            self.reader.join(READER_JOIN_S)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether the ready line came within `timeout_s`, and before the output ended."""
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(0.1):
            reading = self.reader is not None and self.reader.is_alive()
            if not reading or time.monotonic() > deadline:
                return self.ready.is_set()
        return True


def start(
    name: str,
    command: Sequence[str],
    environment: Mapping[str, str],
    *,
    echo: TextIO | None = None,
    keep: int | None = 0,
    ready_marker: str | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    cwd: Path | None = None,
) -> Child:
    """Start `command` in its own session with `environment` over this process's.

    Its output goes to `echo` (each line after the child's name) and the last `keep` lines to
    `Child.log` (every line with None); with `ready_marker`, this waits for a line containing it
    and, failing that, stops the child and raises RuntimeError with the lines kept.
    """
    read = echo is not None or keep != 0 or ready_marker is not None
    process = subprocess.Popen(
        list(command),
        env={**os.environ, **environment},
        stdout=subprocess.PIPE if read else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if read else subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=cwd,
        start_new_session=True,
    )
    child = Child(name, process, deque(maxlen=keep))
    if read:
        child.reader = threading.Thread(target=_read, args=(child, echo, ready_marker), daemon=True)
        child.reader.start()
    if ready_marker is not None and not child.wait_ready(ready_timeout_s):
        status = process.poll()
        child.stop()
        why = f"status {status}" if status is not None else f"not ready in {ready_timeout_s:.0f} s"
        raise RuntimeError(f"{name} did not start ({why}):\n{child.tail()}")
    return child


def _read(child: Child, echo: TextIO | None, ready_marker: str | None) -> None:
    assert child.process.stdout is not None
    for line in child.process.stdout:
        child.log.append(line)
        if echo is not None:
            echo.write(f"{child.name:<{NAME_WIDTH}} | {line}")
            echo.flush()
        if ready_marker is not None and ready_marker in line:
            child.ready.set()


@dataclass
class ProcessGroup:
    """Children started with `start`; `stop` (or leaving `with`) ends every one of them."""

    echo: TextIO | None = None
    keep: int | None = 0
    children: list[Child] = field(default_factory=list)

    def start(
        self,
        name: str,
        command: Sequence[str],
        environment: Mapping[str, str],
        *,
        ready_marker: str | None = None,
    ) -> Child:
        child = start(
            name, command, environment, echo=self.echo, keep=self.keep, ready_marker=ready_marker
        )
        self.children.append(child)
        return child

    def first_exited(self) -> Child | None:
        """A child that has exited, if any."""
        return next((c for c in self.children if c.process.poll() is not None), None)

    def wait(self) -> Child:
        """Block until some child exits; returns it."""
        while True:
            exited = self.first_exited()
            if exited is not None:
                return exited
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM every child's process group, then SIGKILL whatever is left after a grace."""
        for child in self.children:
            child.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children:
            child.finish(deadline)
        self.children.clear()

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen[str], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
