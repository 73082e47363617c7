"""scripts/process_supervisor.py: process groups, stop order, escalation, dead children."""

from __future__ import annotations

import signal
import sys
import time

import process_supervisor  # scripts/ is on sys.path (tests/scripts/conftest.py)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "


def test_stop_reaches_grandchildren_in_the_process_group(leftover_processes):
    supervisor = process_supervisor.Supervisor()
    supervisor.start("shell", ["sh", "-c", "sleep 300 & sleep 300 & wait"])
    time.sleep(0.3)
    assert len(leftover_processes()) == 3

    supervisor.stop(timeout=5)

    assert leftover_processes() == []


def test_a_child_that_ignores_sigterm_is_killed_within_the_timeout(leftover_processes):
    supervisor = process_supervisor.Supervisor()
    child = supervisor.start("stubborn", python(IGNORE_TERM + "time.sleep(300)"))
    time.sleep(0.5)

    started = time.monotonic()
    supervisor.stop(timeout=2)

    assert time.monotonic() - started < 5
    assert child.process.returncode == -signal.SIGKILL
    assert leftover_processes() == []


def test_the_escalation_signal_comes_before_sigkill():
    supervisor = process_supervisor.Supervisor()
    child = supervisor.start(
        "celery-like",
        python(IGNORE_TERM + "import sys; signal.signal(signal.SIGQUIT, lambda *_: sys.exit(3)); "
               "time.sleep(300)"),
        escalation_signal=signal.SIGQUIT,
    )
    time.sleep(0.5)

    supervisor.stop(timeout=4)

    assert child.process.returncode == 3


def test_infrastructure_stops_after_its_clients(tmp_path):
    client_done = tmp_path / "client-done"
    verdict = tmp_path / "verdict"
    supervisor = process_supervisor.Supervisor()
    supervisor.start("redis-like", python(
        "import pathlib, signal, sys, time\n"
        "def stop(*_):\n"
        f"    seen = pathlib.Path({str(client_done)!r}).exists()\n"
        f"    pathlib.Path({str(verdict)!r}).write_text('after' if seen else 'before')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "time.sleep(300)\n"
    ), infrastructure=True)
    supervisor.start("client", python(
        "import pathlib, signal, sys, time\n"
        "def stop(*_):\n"
        "    time.sleep(0.5)\n"
        f"    pathlib.Path({str(client_done)!r}).touch()\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "time.sleep(300)\n"
    ))
    time.sleep(0.5)

    supervisor.stop(timeout=10)

    assert verdict.read_text() == "after"


def test_first_exited_names_the_child_that_died():
    supervisor = process_supervisor.Supervisor()
    supervisor.start("sleeper", ["sleep", "300"])
    dying = supervisor.start("dying", ["sh", "-c", "exit 7"])
    dying.process.wait(timeout=5)
    try:
        assert supervisor.first_exited() is dying
    finally:
        supervisor.stop(timeout=5)
