"""scripts/process_supervisor.py: process groups, stop order, escalation, restarts, stop signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import process_supervisor  # scripts/ is on sys.path (tests/scripts/conftest.py)
import pytest


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
FAST_RESTARTS = process_supervisor.RestartPolicy(first_delay_seconds=0.05)


def supervise_until(supervisor: process_supervisor.Supervisor, condition, timeout: float = 10):
    """Runs the supervisor's restart loop until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        supervisor.supervise()
        time.sleep(0.01)


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


def test_a_child_that_exits_on_its_own_is_started_again(leftover_processes):
    supervisor = process_supervisor.Supervisor(FAST_RESTARTS)
    child = supervisor.start("sleeper", ["sleep", "300"])
    first_pid = child.process.pid
    try:
        os.kill(first_pid, signal.SIGKILL)
        child.process.wait(timeout=5)

        supervise_until(supervisor, lambda: child.process.pid != first_pid and child.running)

        assert len(child.crash_times) == 1
    finally:
        supervisor.stop(timeout=5)
    assert leftover_processes() == []


def test_a_child_that_keeps_crashing_is_given_up_on(leftover_processes):
    supervisor = process_supervisor.Supervisor(FAST_RESTARTS)
    supervisor.start("sleeper", ["sleep", "300"])
    supervisor.start("crasher", ["sh", "-c", "exit 7"])
    started = time.monotonic()
    try:
        with pytest.raises(process_supervisor.KeptCrashing, match="crasher exited 5 times") as exc:
            supervise_until(supervisor, lambda: False)
        assert exc.value.child.process.returncode == 7
        # Backoff: 0.05 + 0.1 + 0.2 + 0.4 s between the five starts.
        assert time.monotonic() - started >= 0.75
    finally:
        supervisor.stop(timeout=5)
    assert leftover_processes() == []


def test_the_restart_delay_doubles_up_to_its_cap():
    policy = process_supervisor.RestartPolicy(first_delay_seconds=0.5, max_delay_seconds=3)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1, 2, 3, 3]


def test_crashes_older_than_the_window_are_forgotten(leftover_processes):
    # Each restart comes 0.4 s after its crash: no two crashes ever fall in one window.
    policy = process_supervisor.RestartPolicy(max_crashes=2, window_seconds=0.3,
                                              first_delay_seconds=0.4)
    supervisor = process_supervisor.Supervisor(policy)
    child = supervisor.start("crasher", ["sh", "-c", "exit 3"])
    pids = {child.process.pid}

    def started_four_times() -> bool:
        pids.add(child.process.pid)
        return len(pids) == 4

    try:
        supervise_until(supervisor, started_four_times)
    finally:
        supervisor.stop(timeout=5)
    assert leftover_processes() == []


# --- StopSignals: one stop request, however many copies of the signal arrive at once ------

# A supervisor with one child that takes SLOW seconds to stop on SIGTERM; prints the child's
# exit code once stopped.
SIGNAL_DRIVER = """
import sys, time
from process_supervisor import StopSignals, Supervisor
supervisor = Supervisor()
stop = StopSignals(supervisor)
stop.install()
child = supervisor.start("slow", [sys.executable, "-c", sys.argv[1]])
while not stop.requested:
    time.sleep(0.02)
print("stopping", flush=True)
supervisor.stop(timeout=30)
print("child exit code", child.process.returncode, flush=True)
"""
SLOW_TO_STOP = (
    "import signal, sys, time\n"
    "def stop(*_):\n"
    "    time.sleep({seconds})\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "print('child ready', flush=True)\n"
    "time.sleep(300)\n"
)


def start_signal_driver(stop_seconds: float, stderr: int | None = None) -> subprocess.Popen:
    driver = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_DRIVER, SLOW_TO_STOP.format(seconds=stop_seconds)],
        cwd=Path(process_supervisor.__file__).parent, stdout=subprocess.PIPE, stderr=stderr,
        text=True, start_new_session=True,
    )
    assert driver.stdout is not None
    assert driver.stdout.readline() == "child ready\n"
    return driver


def test_a_signal_delivered_twice_at_once_stops_gracefully(leftover_processes):
    driver = start_signal_driver(stop_seconds=1.5)
    started = time.monotonic()
    # What make run gets from a terminal or systemd: the group's SIGTERM, then make's copy
    # (here once the first one has been acted on, the case that used to hurry the stop).
    os.killpg(driver.pid, signal.SIGTERM)
    assert driver.stdout.readline() == "stopping\n"
    os.kill(driver.pid, signal.SIGTERM)
    assert time.monotonic() - started < process_supervisor.REPEAT_SIGNAL_SECONDS
    output, _ = driver.communicate(timeout=30)

    assert output == "child exit code 0\n"
    assert time.monotonic() - started >= 1.5
    assert leftover_processes() == []


def test_a_second_signal_a_moment_later_hurries_the_stop(leftover_processes):
    driver = start_signal_driver(stop_seconds=60)
    started = time.monotonic()
    driver.send_signal(signal.SIGINT)
    assert driver.stdout.readline() == "stopping\n"
    time.sleep(process_supervisor.REPEAT_SIGNAL_SECONDS + 0.5)  # a person pressing Ctrl-C again
    driver.send_signal(signal.SIGINT)
    output, _ = driver.communicate(timeout=30)

    assert output == f"child exit code {-signal.SIGKILL}\n"
    assert time.monotonic() - started < 10
    assert leftover_processes() == []


def test_the_stop_goes_on_when_the_log_cannot_be_written(leftover_processes):
    """A closed terminal or pipe makes every log line fail (EIO, EPIPE)."""
    driver = start_signal_driver(stop_seconds=0.5, stderr=subprocess.PIPE)
    assert driver.stderr is not None
    driver.stderr.close()
    driver.send_signal(signal.SIGTERM)
    output, _ = driver.communicate(timeout=30)

    assert output.splitlines() == ["stopping", "child exit code 0"]
    assert leftover_processes() == []
