"""The real service as child processes, for integration tests and benchmarks: its own
redis-server on a free port, the generation and webhook workers as real Celery processes,
and the API under uvicorn, all stopped when the context exits.

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
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
READY_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class ServiceProcesses:
    """Where the running service answers; ``workdir`` holds each process's log."""

    url: str
    redis_url: str
    data_dir: Path
    webhook_secret: str
    workdir: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    workdir: Path, env_overrides: Mapping[str, str] | None = None, node_tag: str = "test"
) -> Iterator[ServiceProcesses]:
    """Start the service with its files under ``workdir``; yields once ``/readyz`` is 200.

    The defaults suit tests (tiny-random model, one torch thread, fast webhook retries to
    private addresses); ``env_overrides`` replaces any ``LATENTD_*`` value.
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
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            start_process(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                    "--dir", str(workdir), "--save", "", "--appendonly", "no"],
                   env, workdir / "redis.log"),
        )
        time.sleep(0.3)
        procs.append(
            start_process([str(BIN / "celery"), "-A", "worker.generation_worker", "worker", "--pool",
                    "prefork", "--concurrency", "1", "--loglevel", "INFO",
                    "-n", f"gen-{node_tag}@%h"],
                   env, workdir / "worker.log"),
        )
        procs.append(
            start_process([str(BIN / "celery"), "-A", "worker.webhook_worker", "worker", "--pool",
                    "threads", "--concurrency", "4", "-Q", "webhooks", "--loglevel", "INFO",
                    "-n", f"webhooks-{node_tag}@%h"],
                   env, workdir / "webhook-worker.log"),
        )
        procs.append(
            start_process([str(BIN / "uvicorn"), "api.main:app", "--host", "127.0.0.1", "--port",
                    str(api_port)], env, workdir / "api.log"),
        )
        url = f"http://127.0.0.1:{api_port}"
        _wait_until_ready(url, procs, workdir)
        yield ServiceProcesses(url, redis_url, workdir / "data", secret, workdir)
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def _wait_until_ready(url: str, procs: list[subprocess.Popen], workdir: Path) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[:3]} exited early; logs in {workdir}")
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
