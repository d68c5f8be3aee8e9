"""The supervisor of child processes: readiness, kept and echoed output, and stopping a child's
whole process group, on real processes."""

import io
import signal
import sys
import time
import uuid

import psutil
import pytest

from metering.dev import processes

# A child that forks a grandchild (as Celery forks its pool), says so, then waits.
FORKING = """
import signal, subprocess, sys, time
if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("grandchild", grandchild.pid, flush=True)
print("worker ready.", flush=True)
time.sleep(600)
"""


def _forking(*args: str) -> list[str]:
    return [sys.executable, "-c", FORKING, *args]


def _grandchild(child: processes.Child) -> int:
    return int(child.log[0].split()[1])


def _gone(pid: int) -> bool:
    """Whether `pid` ends (or is left a zombie) within a few seconds."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_start_waits_for_the_ready_line_and_stop_ends_the_group() -> None:
    child = processes.start("forker", _forking(), {}, keep=None, ready_marker=" ready.")
    grandchild = _grandchild(child)
    assert child.process.poll() is None
    assert {process.pid for process in child.tree()} == {child.process.pid, grandchild}

    child.stop()

    assert child.process.returncode == -signal.SIGTERM
    assert _gone(grandchild)
    assert child.tree() == []
    assert list(child.log) == [f"grandchild {grandchild}\n", "worker ready.\n"]


def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace() -> None:
    child = processes.start("stubborn", _forking("--ignore-term"), {}, ready_marker=" ready.")
    child.stop(grace_s=0.5)
    assert child.process.returncode == -signal.SIGKILL


def test_kill_ends_the_child_and_what_it_forked_at_once() -> None:
    child = processes.start("doomed", _forking(), {}, keep=1, ready_marker=" ready.")
    assert list(child.log) == ["worker ready.\n"]
    pids = {process.pid for process in child.tree()}

    child.kill()

    assert child.process.returncode == -signal.SIGKILL
    assert all(_gone(pid) for pid in pids)
    child.stop()  # stopping a killed child is harmless
    assert child.process.returncode == -signal.SIGKILL


def test_a_child_that_exits_before_it_is_ready_fails_the_start_with_its_last_lines() -> None:
    failing = [sys.executable, "-c", "print('cannot connect to redis'); raise SystemExit(3)"]
    with pytest.raises(RuntimeError) as raised:
        processes.start("worker", failing, {}, keep=40, ready_marker=" ready.", ready_timeout_s=600)
    assert "worker did not start (status 3)" in str(raised.value)
    assert "cannot connect to redis" in str(raised.value)


def test_a_child_that_is_never_ready_is_stopped_after_the_timeout() -> None:
    marker = f"never-ready-{uuid.uuid4().hex}"
    silent = [sys.executable, "-c", f"print('{marker}', flush=True); import time; time.sleep(600)"]
    with pytest.raises(RuntimeError, match="not ready in 1 s") as raised:
        processes.start("worker", silent, {}, keep=40, ready_marker=" ready.", ready_timeout_s=1)
    assert marker in str(raised.value)
    assert _survivors(marker) == []


def test_a_group_echoes_output_after_each_name_and_stops_every_child() -> None:
    echo = io.StringIO()
    environment = {"GREETING": "hello"}
    say = "import os; print(os.environ['GREETING'], flush=True); import time; time.sleep(600)"
    with processes.ProcessGroup(echo=echo) as group:
        first = group.start("web", [sys.executable, "-c", say], environment)
        second = group.start("beat", _forking(), {}, ready_marker=" ready.")
        grandchild = int(echo.getvalue().split("grandchild ")[1].split()[0])
        assert group.first_exited() is None
    assert group.children == []
    assert first.process.returncode == second.process.returncode == -signal.SIGTERM
    assert _gone(grandchild)
    lines = echo.getvalue().splitlines()
    width = processes.NAME_WIDTH
    assert f"{'web':<{width}} | hello" in lines
    assert f"{'beat':<{width}} | worker ready." in lines
    assert list(first.log) == []  # the group keeps no lines unless asked


def test_wait_returns_the_child_that_exited() -> None:
    with processes.ProcessGroup() as group:
        group.start("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], {})
        quitter = group.start("quitter", [sys.executable, "-c", "raise SystemExit(2)"], {})
        assert group.wait() is quitter
        assert quitter.process.returncode == 2


def _survivors(marker: str) -> list[int]:
    return [
        process.pid
        for process in psutil.process_iter(["cmdline", "status"])
        if marker in " ".join(process.info["cmdline"] or [])
        and process.info["status"] != psutil.STATUS_ZOMBIE
    ]
