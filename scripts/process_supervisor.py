"""Supervision of a few long-running child processes, each in its own process group.

Stopping a child signals its leader, then escalates, then SIGKILLs the whole group, so that
the child's own children (Celery's prefork pool) never outlive it. A terminal's Ctrl-C
reaches only the supervising process, which decides the order of shutdown.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STOP_TIMEOUT_SECONDS = 30.0
PR_SET_PDEATHSIG = 1


def log(message: str) -> None:
    print(f"latentd: {message}", file=sys.stderr, flush=True)


def _die_with_launcher() -> None:
    """Runs in the child before exec: if the supervisor is killed outright, it gets SIGTERM."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the process groups still get stopped
        pass


@dataclass
class Child:
    """One supervised process and how to stop it."""

    name: str
    process: subprocess.Popen
    # Stopped after every non-infrastructure child is gone (Redis outlives its clients).
    infrastructure: bool = False
    # Sent halfway through the grace period if SIGTERM has not worked yet (Celery's cold
    # shutdown: it cancels the running late-ack task, whose message goes back to the broker
    # for the next worker, instead of waiting for it to finish).
    escalation_signal: signal.Signals | None = None

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


@dataclass
class Supervisor:
    """Starts children in their own process groups and stops them all, in order, on request."""

    children: list[Child] = field(default_factory=list)
    # Set by a second Ctrl-C/SIGTERM during shutdown: skip the grace period.
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
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # Safe here: the launcher runs no threads that could hold a lock across fork.
            preexec_fn=_die_with_launcher,  # noqa: PLW1509
        )
        child = Child(name, process, infrastructure, escalation_signal)
        self.children.append(child)
        return child

    def first_exited(self) -> Child | None:
        return next((child for child in self.children if not child.running), None)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """TERM, then the escalation signal, then KILL the group: all within ``timeout``."""
        deadline = time.monotonic() + timeout
        clients = [c for c in reversed(self.children) if not c.infrastructure]
        infrastructure = [c for c in reversed(self.children) if c.infrastructure]
        # Clients get most of the time: a Celery warm shutdown waits for the running task.
        self._stop_all(clients, time.monotonic() + 0.75 * timeout)
        self._stop_all(infrastructure, deadline)

    def _stop_all(self, children: list[Child], deadline: float) -> None:
        if not children:
            return
        for child in children:
            child.signal_leader(signal.SIGTERM)
        escalate_at = time.monotonic() + (deadline - time.monotonic()) / 2
        escalated = False
        while time.monotonic() < deadline and not self.hurry:
            if not any(child.running for child in children):
                break
            if not escalated and time.monotonic() >= escalate_at:
                for child in children:
                    if child.escalation_signal is not None:
                        child.signal_leader(child.escalation_signal)
                escalated = True
            time.sleep(0.1)
        for child in children:
            if child.running:
                log(f"{child.name} did not stop in time; killing it")
            # Also reaps group members a leader left behind (e.g. pool children).
            child.kill_group()


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    supervisor: Supervisor,
    stop_requested: Callable[[], bool],
) -> bool:
    """Polls ``check`` until it holds; False on timeout. Raises ChildDied if a child exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop_requested():
            return False
        dead = supervisor.first_exited()
        if dead is not None:
            raise ChildDied(dead)
        if check():
            return True
        time.sleep(0.25)
    return False


class ChildDied(Exception):
    def __init__(self, child: Child):
        super().__init__(f"{child.name} exited with code {child.process.returncode}")
        self.child = child
