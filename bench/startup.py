"""``make run`` to ready, and the generation worker's memory with the models it loaded.

Runs the launcher ``make run`` runs (``scripts/run.py``: its own redis-server, both
workers, the API; the venv already built) on free ports with its files in a temporary
folder, times it from start to the first ``/readyz`` 200, then reads the worker's resident
memory from ``GET /metrics`` (its heartbeat publishes it) and stops it as Ctrl-C would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from scripts.service_processes import REPO, free_port

_RSS = re.compile(r'^latentd_worker_resident_memory_bytes\{worker="[^"]*"\} ([\d.e+]+)$',
                  re.MULTILINE)
READY_TIMEOUT_SECONDS = 300
STATS_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Startup:
    models: tuple[str, ...]
    seconds_to_ready: float
    worker_rss_bytes: int  # the largest generation worker's, if several


def time_make_run(models: Sequence[str], torch_threads: int) -> Startup:
    """Start ``scripts/run.py`` serving ``models`` (the first is the default), wait until
    ready, read the worker's RSS, stop it. ``RuntimeError`` (with its log) if it fails."""
    with tempfile.TemporaryDirectory(prefix="latentd-bench-run-") as folder:
        port = free_port()
        env = {key: value for key, value in os.environ.items()
               if key != "LATENTD_REDIS_URL"}  # run.py starts its own, as `make run` does
        env.update(LATENTD_DATA_DIR=str(Path(folder) / "data"), LATENTD_PORT=str(port),
                   LATENTD_HOST="127.0.0.1", LATENTD_DEFAULT_MODEL=models[0],
                   LATENTD_WORKER_MODELS=",".join(models),
                   LATENTD_TORCH_THREADS=str(torch_threads), LATENTD_LOG_FORMAT="text")
        log_path = Path(folder) / "run.log"
        url = f"http://127.0.0.1:{port}"
        with log_path.open("wb") as log:
            started = time.perf_counter()
            launcher = subprocess.Popen([sys.executable, "scripts/run.py"], cwd=REPO, env=env,
                                        stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            try:
                ready_after = _wait_ready(url, launcher, started, log_path)
                rss = _worker_rss(url, log_path)
            finally:
                _stop(launcher)
    return Startup(tuple(models), ready_after, rss)


def _wait_ready(url: str, launcher: subprocess.Popen, started: float, log: Path) -> float:
    with httpx.Client(base_url=url, timeout=5) as client:
        while time.perf_counter() - started < READY_TIMEOUT_SECONDS:
            if launcher.poll() is not None:
                raise RuntimeError(f"scripts/run.py exited early:\n{_tail(log)}")
            try:
                if client.get("/readyz").status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"not ready after {READY_TIMEOUT_SECONDS} s:\n{_tail(log)}")


def _worker_rss(url: str, log: Path) -> int:
    deadline = time.monotonic() + STATS_TIMEOUT_SECONDS
    with httpx.Client(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            found = [float(value) for value in _RSS.findall(client.get("/metrics").text)]
            if found:
                return int(max(found))
            time.sleep(0.5)
    raise RuntimeError(f"no worker memory in /metrics after {STATS_TIMEOUT_SECONDS} s:\n"
                       f"{_tail(log)}")


def _stop(launcher: subprocess.Popen) -> None:
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGINT)  # as Ctrl-C: run.py stops its children
        try:
            launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(timeout=10)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
