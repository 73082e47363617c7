"""The real service as child processes, for integration tests and benchmarks: its own
redis-server on a free port, the generation and webhook workers as real Celery processes,
and the API under uvicorn (the command lines of scripts/process_commands.py, as ``make run``
starts them), all stopped when the context exits.

Imported as ``scripts.service_processes`` (the repository root is on ``sys.path`` for
pytest and for ``python -m``).
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from scripts.process_commands import (
    API,
    GENERATION_APP,
    GENERATION_WORKER,
    WEBHOOK_WORKER,
    service_commands,
)

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class ServiceProcesses:
    """Where the running service answers; ``workdir`` holds each process's log.

    ``env`` is the environment its processes run with (to start another worker like
    them), ``redis_argv`` the command its redis-server was started with (to start it
    again on the same port and files).
    """

    url: str
    redis_url: str
    data_dir: Path
    webhook_secret: str
    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    redis_argv: tuple[str, ...] = ()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_command(port: int, workdir: Path, aof: bool = False) -> list[str]:
    """redis-server on 127.0.0.1:``port`` with its files in ``workdir``, never snapshotting;
    ``aof``: with the append-only file as ``make run`` and docker-compose keep it (fsync
    every second), so that a restart finds every acknowledged write."""
    persistence = (["--appendonly", "yes", "--appendfsync", "everysec"] if aof
                   else ["--appendonly", "no"])
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", *persistence]


def start_process(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # Own process group: Celery's prefork children go down with their parent.
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def running_service(
    workdir: Path, env_overrides: Mapping[str, str] | None = None, node_tag: str = "test",
    generation_app: str = GENERATION_APP, redis_aof: bool = False,
) -> Iterator[ServiceProcesses]:
    """Start the service with its files under ``workdir``; yields once ``/readyz`` is 200.

    The defaults suit tests (tiny-random model, one torch thread, fast webhook retries to
    private addresses); ``env_overrides`` replaces any ``LATENTD_*`` value. ``redis_aof``
    runs Redis with its append-only file on (see ``redis_command``).
    """
    redis_port, api_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    env = {
        **os.environ,
        "LATENTD_REDIS_URL": redis_url,
        "LATENTD_DATA_DIR": str(workdir / "data"),
        "LATENTD_PORT": str(api_port),
        "LATENTD_DEFAULT_MODEL": "tiny-random",
        "LATENTD_WEBHOOK_SECRET": secret,
        "LATENTD_WEBHOOK_ALLOW_PRIVATE": "true",
        "LATENTD_WEBHOOK_RETRY_BASE_SECONDS": "0.3",
        "LATENTD_WEBHOOK_TIMEOUT_SECONDS": "3",
        "LATENTD_TORCH_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **(env_overrides or {}),
    }
    commands = service_commands(
        sys.executable, host="127.0.0.1", port=api_port, node_tag=node_tag,
        webhook_concurrency=4, webhook_loglevel="INFO", generation_app=generation_app,
    )
    logs = {GENERATION_WORKER: "worker.log", WEBHOOK_WORKER: "webhook-worker.log", API: "api.log"}
    procs: dict[str, subprocess.Popen] = {}
    redis_argv = redis_command(redis_port, workdir, aof=redis_aof)
    try:
        procs["redis-server"] = start_process(redis_argv, env, workdir / "redis.log")
        time.sleep(0.3)
        for name, argv in commands.items():
            procs[name] = start_process(argv, env, workdir / logs[name])
        url = f"http://127.0.0.1:{api_port}"
        _wait_until_ready(url, procs, workdir)
        yield ServiceProcesses(url, redis_url, workdir / "data", secret, workdir, env,
                               tuple(redis_argv))
    finally:
        for proc in reversed(procs.values()):
            stop_process(proc)


def _wait_until_ready(url: str, procs: Mapping[str, subprocess.Popen], workdir: Path) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited early; logs in {workdir}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"service not ready after {READY_TIMEOUT_SECONDS} s; logs in {workdir}"
                )
            time.sleep(0.2)
