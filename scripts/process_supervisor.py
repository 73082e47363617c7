"""Supervision of a few long-running child processes, each in its own process group.

A child that exits on its own is started again after a growing delay; one that keeps
crashing makes the supervisor give up (``KeptCrashing``). Stopping a child signals its
leader, then escalates, then SIGKILLs the whole group, so that the child's own children
(Celery's prefork pool) never outlive it. Signals sent to the launcher's process group (a
terminal's Ctrl-C, systemd, a container runtime) reach only the supervising process, which
decides the order of shutdown; ``StopSignals`` turns them into one stop request.

Hand-written rather than supervisord or circus: those stop a program with one signal and
then SIGKILL, while a Celery worker needs SIGTERM (warm shutdown: the running job finishes),
then SIGQUIT (cold shutdown: the late-ack job goes back on the queue) and only then SIGKILL,
which would leave the job's message unacknowledged for the broker's one-hour visibility
timeout; and they keep running when a program gives up, where ``make run`` must exit.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STOP_TIMEOUT_SECONDS = 30.0
# One stop often arrives as two signals at once: the group-wide one, and the copy ``make``
# forwards to its child. Only a signal later than this after the first (a person pressing
# Ctrl-C again) means "hurry".
REPEAT_SIGNAL_SECONDS = 1.0
PR_SET_PDEATHSIG = 1


def log(message: str) -> None:
    try:
        print(f"latentd: {message}", file=sys.stderr, flush=True)
    except OSError:  # the terminal is gone (EIO) or the pipe closed: stopping matters more
        pass


def exit_status(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def _die_with_launcher() -> None:
    """Runs in the child before exec: if the supervisor is killed outright, it gets SIGTERM."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the process groups still get stopped
        pass


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that exited on its own is started again, and when to stop trying."""

    # Giving up on the max_crashes-th exit within window_seconds: a child that cannot stay
    # up (a corrupt append-only file, a broken install) should fail the service, not spin.
    max_crashes: int = 5
    window_seconds: float = 60.0
    # Doubling from first_delay_seconds: a crash from a passing cause (OOM kill) is repaired
    # at once, a repeated one does not hammer Redis or the GPU with model loads.
    first_delay_seconds: float = 0.5
    max_delay_seconds: float = 8.0

    def delay(self, recent_crashes: int) -> float:
        """Seconds to wait before the restart that follows the ``recent_crashes``-th crash."""
        return min(self.first_delay_seconds * 2 ** (recent_crashes - 1), self.max_delay_seconds)


@dataclass
class Child:
    """One supervised process: how to start it again and how to stop it."""

    name: str
    argv: list[str]
    cwd: Path | None = None
    env: dict[str, str] | None = None
    # Stopped after every non-infrastructure child is gone (Redis outlives its clients).
    infrastructure: bool = False
    # Sent halfway through the grace period if SIGTERM has not worked yet (Celery's cold
    # shutdown: it cancels the running late-ack task, whose message goes back to the broker
    # for the next worker, instead of waiting for it to finish).
    escalation_signal: signal.Signals | None = None
    process: subprocess.Popen = field(init=False)
    # When it exited on its own, within the restart policy's window.
    crash_times: deque[float] = field(default_factory=deque)
    restart_at: float | None = None

    def spawn(self) -> None:
        self.process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # Safe here: the launcher runs no threads that could hold a lock across fork.
            preexec_fn=_die_with_launcher,  # noqa: PLW1509
        )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def signal_leader(self, signum: int) -> None:
        if self.running:
            try:
                os.kill(self.process.pid, signum)
            except ProcessLookupError:
                pass

    def kill_group(self) -> None:
        """SIGKILL whatever is left in the child's process group and wait until it is gone."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + 5
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        # SIGKILL is delivered asynchronously: orphaned members can linger a moment.
        while group_has_live_members(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def group_has_live_members(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies awaiting reaping do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Fields after the parenthesised command: state, ppid, pgrp, ...
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


class KeptCrashing(Exception):
    """A child exited on its own as often as the restart policy allows: the supervisor gave up."""

    def __init__(self, child: Child, policy: RestartPolicy):
        super().__init__(
            f"{child.name} exited {policy.max_crashes} times within {policy.window_seconds:g} s "
            f"(last: {exit_status(child.process.returncode)}); giving up"
        )
        self.child = child


@dataclass
class Supervisor:
    """Starts children in their own process groups, restarts those that crash, and stops
    them all, in order, on request."""

    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    children: list[Child] = field(default_factory=list)
    # Set by a second, later Ctrl-C/SIGTERM (StopSignals): skip the grace period.
    hurry: bool = False

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        infrastructure: bool = False,
        escalation_signal: signal.Signals | None = None,
    ) -> Child:
        child = Child(name, list(argv), cwd, env, infrastructure, escalation_signal)
        child.spawn()
        self.children.append(child)
        return child

    def supervise(self) -> None:
        """Restart children that exited on their own, each once its delay has passed.

        Call it often (every fraction of a second). Raises ``KeptCrashing`` on the crash
        that exhausts the restart policy; the caller then stops everything.
        """
        policy = self.restart_policy
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    child.spawn()
                continue
            if child.running:
                continue
            child.kill_group()  # what the dead leader left in its group
            child.crash_times.append(now)
            while child.crash_times[0] < now - policy.window_seconds:
                child.crash_times.popleft()
            crashes = len(child.crash_times)
            if crashes >= policy.max_crashes:
                raise KeptCrashing(child, policy)
            delay = policy.delay(crashes)
            log(f"{child.name} exited ({exit_status(child.process.returncode)}); restarting it "
                f"in {delay:g} s (exit {crashes} within {policy.window_seconds:g} s; giving up "
                f"at {policy.max_crashes})")
            child.restart_at = now + delay

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """TERM, then the escalation signal, then KILL the group: all within ``timeout``."""
        for child in self.children:
            child.restart_at = None
        deadline = time.monotonic() + timeout
        clients = [c for c in reversed(self.children) if not c.infrastructure]
        infrastructure = [c for c in reversed(self.children) if c.infrastructure]
        # Clients get most of the time: a Celery warm shutdown waits for the running task.
        self._stop_all(clients, time.monotonic() + 0.75 * timeout)
        self._stop_all(infrastructure, deadline)

    def _stop_all(self, children: list[Child], deadline: float) -> None:
        if not children:
            return
        started = time.monotonic()
        for child in children:
            child.signal_leader(signal.SIGTERM)
        escalate_at = started + (deadline - started) / 2
        escalated = False
        waiting = [child for child in children if child.running]
        while waiting and time.monotonic() < deadline and not self.hurry:
            for child in [child for child in waiting if not child.running]:
                log(f"{child.name} stopped after {time.monotonic() - started:.1f} s "
                    f"({exit_status(child.process.returncode)})")
                waiting.remove(child)
            if not escalated and time.monotonic() >= escalate_at:
                for child in waiting:
                    if child.escalation_signal is not None:
                        child.signal_leader(child.escalation_signal)
                escalated = True
            time.sleep(0.1)
        for child in children:
            if child.running:
                reason = "stop signal repeated" if self.hurry else "did not stop in time"
                log(f"{child.name}: {reason}; killing it")
            # Also reaps group members a leader left behind (e.g. pool children).
            child.kill_group()


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP as one stop request for ``supervisor``.

    The first signal requests a graceful stop. Repeats within REPEAT_SIGNAL_SECONDS are the
    same request delivered twice (the process group's signal and ``make``'s forwarded copy)
    and are ignored; a signal after that sets ``supervisor.hurry``.
    """

    def __init__(self, supervisor: Supervisor, repeat_after: float = REPEAT_SIGNAL_SECONDS):
        self.supervisor = supervisor
        self.repeat_after = repeat_after
        self.first_at: float | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    @property
    def requested(self) -> bool:
        return self.first_at is not None

    def _on_signal(self, _signum: int, _frame: object) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        elif now - self.first_at > self.repeat_after:
            self.supervisor.hurry = True


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    supervisor: Supervisor,
    stop_requested: Callable[[], bool],
) -> bool:
    """Polls ``check`` until it holds, restarting crashed children meanwhile; False on
    timeout or a stop request. Raises ``KeptCrashing`` (from ``supervisor.supervise``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop_requested():
            return False
        supervisor.supervise()
        if check():
            return True
        time.sleep(0.25)
    return False
