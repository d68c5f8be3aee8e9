"""Child processes of `metering dev` and `metering demo`: started together, stopped together.

Each child runs in its own session (process group), so stopping it also stops what it forked
(Celery's pool children, uvicorn's reloader). Output is copied line by line with the child's name
in front.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from metering.dev.stack import CELERY_APP, STACK

STOP_GRACE_S = 20.0
NAME_WIDTH = max(len(process.name) for process in STACK)


def celery_command(*args: str) -> list[str]:
    """`celery -A metering.tasks.app ARGS...` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, *args]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[str]
    reader: threading.Thread | None = None


@dataclass
class ProcessGroup:
    """Children started with `start`; `stop` ends every one of them, however they behave."""

    environment: Mapping[str, str]
    output: TextIO | None = sys.stdout
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, command: Sequence[str]) -> Child:
        process = subprocess.Popen(
            list(command),
            env={**os.environ, **self.environment},
            stdout=subprocess.PIPE if self.output else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self.output else subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        child = Child(name, process)
        if self.output is not None:
            child.reader = threading.Thread(target=self._copy, args=(child,), daemon=True)
            child.reader.start()
        self.children.append(child)
        return child

    def _copy(self, child: Child) -> None:
        assert child.process.stdout is not None
        assert self.output is not None
        for line in child.process.stdout:
            self.output.write(f"{child.name:<{NAME_WIDTH}} | {line}")
            self.output.flush()

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
            _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait()
            # Pool children may outlive their parent for a moment: make sure the group is gone.
            _signal_group(child.process, signal.SIGKILL)
            if child.reader is not None:
                child.reader.join(5)
            if child.process.stdout is not None:
                child.process.stdout.close()
        self.children.clear()


def _signal_group(process: subprocess.Popen[str], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
