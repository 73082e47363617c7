#!/usr/bin/env python3
"""Run latentd on this machine as one supervised unit (``make run``).

Starts Redis (unless LATENTD_REDIS_URL names one), the generation worker, the webhook worker
and the API; waits for ``/readyz``; then waits. One Ctrl-C or SIGTERM (even delivered twice at
once, as ``make`` does) stops everything it started gracefully within 30 s; another one more
than a second later kills what is left. A process that dies on its own is started again; one
that keeps dying (5 times within 60 s) stops everything, with a non-zero exit code.

Children are stopped in order: API and workers first (Celery's warm shutdown, then its cold
one, which puts the running job back on the queue), Redis last so that in-flight acks and
the append-only file land (see process_supervisor.py for how each one is stopped). Their
command lines come from process_commands.py, shared with the test harness and the containers.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

# scripts/ is on sys.path when this file runs as a script.
from process_commands import GENERATION_APP, service_commands
from process_supervisor import KeptCrashing, StopSignals, Supervisor, log, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_PORT = 6379
REDIS = "redis-server"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def load_or_create_webhook_secret(path: Path) -> str:
    """The secret stored at ``path``; a new one is generated and stored on first use."""
    if path.exists():
        secret = path.read_text().strip()
        if not secret.startswith("whsec_"):
            raise SystemExit(f"latentd: {path} does not hold a 'whsec_<base64>' secret")
        return secret
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def http_status(url: str) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read(500).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(500).decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return None, str(exc)


def connect_host(bind_host: str) -> str:
    """Where a local client reaches a server bound to ``bind_host``."""
    if bind_host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bind_host == "::":
        return "[::1]"
    return f"[{bind_host}]" if ":" in bind_host else bind_host


def redis_command(redis_dir: Path, port: int) -> list[str]:
    # AOF with fsync every second: an accepted job survives a Redis restart (DESIGN.md).
    return [
        "redis-server",
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(redis_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--logfile", str(redis_dir / "redis.log"),
    ]


def model_configuration_problem(settings) -> str | None:
    """What is wrong with the model settings, naming the variable; ``None`` when nothing is.

    Checked here, before anything starts, so that a typo fails ``make run`` at once instead
    of after Redis and the workers have come up.
    """
    from shared.model_registry import ModelRegistry

    try:
        ModelRegistry.from_settings(settings)
    except ValueError as exc:
        message = str(exc)
        if "LATENTD_" in message:  # already names the setting
            return message
        if "default model" in message:
            return f"LATENTD_DEFAULT_MODEL: {message}"
        return f"LATENTD_MODELS / LATENTD_DEFAULT_MODEL: {message}"
    return None


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ready-timeout", type=float, default=300.0,
                        help="seconds to wait for /readyz (the first worker start imports torch)")
    parser.add_argument("--generation-app", default=GENERATION_APP,
                        help="the generation worker's Celery app module (the launcher's "
                             "tests run tests.integration.gated_worker, which holds jobs on request)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT))
    from shared.settings import get_settings

    settings = get_settings()  # exits with a readable message on a bad LATENTD_* value
    problem = model_configuration_problem(settings)
    if problem is not None:
        log(f"invalid configuration: {problem}")
        return 2
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if not port_is_free(settings.host, settings.port):
        log(f"{settings.host}:{settings.port} is already in use; set LATENTD_PORT to another port")
        return 1

    supervisor = Supervisor()
    stop = StopSignals(supervisor)
    stop.install()

    try:
        return _run(settings, data_dir, supervisor, args, lambda: stop.requested)
    except KeptCrashing as exc:
        log(str(exc))
        if exc.child.name == REDIS:
            redis_log = data_dir / "redis" / "redis.log"
            log(f"end of {redis_log}:\n{tail(redis_log)}")
        return 1
    finally:
        if supervisor.children:
            log("stopping ...")
            supervisor.stop()
            log("stopped")


def _run(settings, data_dir: Path, supervisor: Supervisor, args: argparse.Namespace,
         stop_requested: Callable[[], bool]) -> int:
    redis_url = _redis(settings, data_dir, supervisor, stop_requested)
    if redis_url is None:
        return 0 if stop_requested() else 1
    # Children inherit the caller's environment plus the resolved values below; each
    # re-reads (and re-validates) its settings from it.
    env = dict(os.environ, PYTHONUNBUFFERED="1", LATENTD_DATA_DIR=str(data_dir),
               LATENTD_HOST=settings.host, LATENTD_PORT=str(settings.port),
               LATENTD_REDIS_URL=redis_url)
    secret_note = "from LATENTD_WEBHOOK_SECRET"
    if settings.webhook_secret is None:
        secret_file = data_dir / "webhook_secret"
        env["LATENTD_WEBHOOK_SECRET"] = load_or_create_webhook_secret(secret_file)
        secret_note = f"{env['LATENTD_WEBHOOK_SECRET']} (stored in {secret_file})"

    commands = service_commands(sys.executable, host=settings.host, port=settings.port,
                                node_tag=str(os.getpid()), generation_app=args.generation_app)
    for name, argv in commands.items():
        escalation = signal.SIGQUIT if "celery" in argv else None
        supervisor.start(name, argv, cwd=REPO_ROOT, env=env, escalation_signal=escalation)

    base_url = f"http://{connect_host(settings.host)}:{settings.port}"
    last_answer = ["none"]

    def ready() -> bool:
        status, body = http_status(base_url + "/readyz")
        last_answer[0] = f"{status} {body}".strip()
        return status == 200

    log(f"waiting for {base_url}/readyz (workers load their models first) ...")
    if not wait_until(ready, args.ready_timeout, supervisor, stop_requested):
        if stop_requested():
            return 0
        log(f"{base_url}/readyz did not return 200 within {args.ready_timeout:.0f} s "
            f"(last answer: {last_answer[0]})")
        return 1

    print(
        f"\nlatentd is ready: {base_url}   (API docs: {base_url}/docs)\n"
        f"  Redis:          {redis_url}\n"
        f"  data:           {data_dir}\n"
        f"  webhook secret: {secret_note}\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )
    while not stop_requested():
        supervisor.supervise()
        time.sleep(0.25)
    return 0


def _redis(settings, data_dir: Path, supervisor: Supervisor,
           stop_requested: Callable[[], bool]) -> str | None:
    """The URL of a Redis that answers: LATENTD_REDIS_URL's, or one started here."""
    if "redis_url" in settings.model_fields_set:
        url = settings.redis_url
        log(f"using the Redis at {url} (LATENTD_REDIS_URL)")
        if wait_until(lambda: redis_answers(url), 15, supervisor, stop_requested):
            return url
        if not stop_requested():
            log(f"the Redis at {url} does not answer")
        return None

    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    port = DEFAULT_REDIS_PORT if port_is_free("127.0.0.1", DEFAULT_REDIS_PORT) else free_port()
    url = f"redis://127.0.0.1:{port}/0"
    supervisor.start(REDIS, redis_command(redis_dir, port), cwd=REPO_ROOT, infrastructure=True)
    if wait_until(lambda: redis_answers(url), 30, supervisor, stop_requested):
        return url
    if not stop_requested():
        log("redis-server did not answer within 30 s")
    return None


if __name__ == "__main__":
    sys.exit(main())
