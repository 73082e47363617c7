"""``scripts/run.py`` as a real process for the launcher's tests: started in a session of
its own (so a test can signal its whole process group, as a terminal, systemd or a
container runtime does), its output collected, its children found by their command lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import redis
from process_supervisor import REPEAT_SIGNAL_SECONDS

from tests.integration.gate import HOLD_METADATA_KEY, release_key

REPO = Path(__file__).resolve().parents[2]
# The integration tests' gate, able to hold a job past the launcher's escalation.
HELD_WORKER = "tests.integration.gated_worker"
READY_TIMEOUT_SECONDS = 240  # the first worker start imports torch; CI has 2 shared cores
TERMINAL = ("succeeded", "failed", "canceled")


class LauncherProcess:
    """One ``scripts/run.py``; ``stop_in_group`` or the finalizer ends it."""

    def __init__(self, data_dir: Path, port: int, *args: str, env: dict[str, str] | None = None):
        self.port = port
        self.process = subprocess.Popen(
            [sys.executable, "scripts/run.py", "--ready-timeout", str(READY_TIMEOUT_SECONDS),
             *args],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
            env={**os.environ, "LATENTD_PORT": str(port), "LATENTD_DATA_DIR": str(data_dir),
                 **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    # --- waiting -------------------------------------------------------------------------

    def wait_ready(self) -> str:
        """Waits for the launcher's "ready" banner; returns the Redis URL it printed."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS + 30
        while not any(line.startswith("  Redis:") for line in self.lines):
            assert self.process.poll() is None, f"the launcher exited early:\n{self.output}"
            assert time.monotonic() < deadline, f"the launcher never got ready:\n{self.output}"
            time.sleep(0.1)
        return next(line.split()[-1] for line in self.lines if line.startswith("  Redis:"))

    def wait_exit(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the launcher still runs after {timeout} s:\n{self.output}")
        self._reader.join(timeout=5)
        return code

    def stop_in_group(self) -> tuple[int, float]:
        """SIGTERM as ``make run`` gets it from a terminal, systemd or a container runtime:
        to the whole process group, then the copy ``make`` forwards to its child, here once
        the launcher has acted on the first (the case a naive "second signal" rule gets
        wrong). Returns the exit code and how long the stop took."""
        started = time.monotonic()
        os.killpg(self.pid, signal.SIGTERM)
        self.signal_again_once_stopping(started)
        code = self.wait_exit(timeout=45)
        return code, time.monotonic() - started

    def signal_again_once_stopping(self, first_signal_at: float) -> None:
        """make's forwarded SIGTERM, as soon as the launcher says it is stopping."""
        while "latentd: stopping ...\n" not in self.lines:
            assert time.monotonic() - first_signal_at < 10, f"no stop:\n{self.output}"
            time.sleep(0.005)
        os.kill(self.pid, signal.SIGTERM)
        # Still the same stop request, by the launcher's rule.
        assert time.monotonic() - first_signal_at < REPEAT_SIGNAL_SECONDS

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    # --- the children --------------------------------------------------------------------

    def child_pid(self, marker: str) -> int | None:
        """The pid of the launcher's child whose command line contains ``marker``."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if int(stat[1]) == self.pid and stat[0] != "Z" and marker in cmdline:
                return int(entry.name)
        return None

    def wait_child_replaced(self, marker: str, old_pid: int, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while (pid := self.child_pid(marker)) in (None, old_pid):
            assert self.process.poll() is None, f"the launcher exited:\n{self.output}"
            assert time.monotonic() < deadline, f"{marker} was not restarted:\n{self.output}"
            time.sleep(0.05)
        assert pid is not None
        return pid

    # --- the API -------------------------------------------------------------------------

    def request(self, path: str, body: dict | None = None, headers: dict | None = None,
                timeout: float = 90) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"content-type": "application/json", **(headers or {})},
            method="GET" if body is None else "POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def job(self, job_id: str) -> dict:
        status, job = self.request(f"/v1/jobs/{job_id}")
        assert status == 200, job
        return job

    def run_job(self, body: dict, timeout: float = 120) -> dict:
        """Submits ``body`` and waits for it to finish; retries while the service is
        coming back (connection refused, 503)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, job = self.request("/v1/jobs", body, {"Prefer": "wait=30"})
            except (urllib.error.URLError, OSError):
                status, job = 0, {}
            if status in (200, 202):
                return self.wait_job(job["id"], lambda job: job["status"] in TERMINAL,
                                     deadline - time.monotonic())
            assert time.monotonic() < deadline, f"no job accepted: {status} {job}"
            time.sleep(0.2)

    def wait_job(self, job_id: str, condition, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while not condition(job := self.job(job_id)):
            assert job["status"] not in TERMINAL, job
            assert time.monotonic() < deadline, f"{job_id} after {timeout} s: {job}"
            time.sleep(0.05)
        return job

    def submit_held(self, body: dict) -> str:
        """Submits a job the held worker stops after its first step; returns its id."""
        status, job = self.request("/v1/jobs", {**body, "metadata": {HOLD_METADATA_KEY: True}})
        assert status == 202, job
        self.wait_job(job["id"], is_held(attempt=1))
        return job["id"]


def is_held(attempt: int):
    """Whether a job is held by the worker's gate in its ``attempt``-th run."""
    return lambda job: (job["status"] == "running" and job["attempts"] == attempt
                        and job["progress"]["step"] >= 1)


def release(redis_url: str, job_id: str) -> None:
    """Lets a held job go on."""
    redis.Redis.from_url(redis_url).rpush(release_key(job_id), 1)
