"""The command lines of latentd's own processes, written once.

``make run`` (scripts/run.py), the test and benchmark harness (scripts/service_processes.py)
and, through tests/scripts/test_containers.py, docker-compose.yml and the Dockerfiles' CMD
all run these commands; only the interpreter, the API's address, the Celery node names and
the knobs below differ between them.

Importable both as ``process_commands`` (scripts/ is on ``sys.path`` when run.py runs as a
script) and as ``scripts.process_commands``. Standard library only.
"""

from __future__ import annotations

GENERATION_WORKER = "generation worker"
WEBHOOK_WORKER = "webhook worker"
API = "API"

DEFAULT_WEBHOOK_CONCURRENCY = 8
GENERATION_APP = "worker.generation_worker"


def node_name(role: str, tag: str) -> str:
    """A Celery node name, ``<role>-<tag>@%h``: Celery expands ``%h`` to the host name."""
    return f"{role}-{tag}@%h"


def service_commands(
    python: str,
    *,
    host: str,
    port: int,
    node_tag: str,
    webhook_concurrency: int = DEFAULT_WEBHOOK_CONCURRENCY,
    webhook_loglevel: str | None = None,
    generation_app: str = GENERATION_APP,
) -> dict[str, list[str]]:
    """Process name → argv, in start order, each run with the interpreter ``python``.

    ``host``/``port``: where the API listens. ``node_tag`` goes into both workers' Celery
    node names, so that several services on one host do not collide. ``webhook_loglevel``
    ``None`` leaves the webhook worker at Celery's default level. ``generation_app`` lets
    the integration tests run the generation worker wrapped with their gate.
    """
    celery = [python, "-m", "celery", "-A"]
    webhook_log = ["--loglevel", webhook_loglevel] if webhook_loglevel else []
    return {
        GENERATION_WORKER: [
            *celery, generation_app, "worker",
            "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO",
            "-n", node_name("gen", node_tag),
        ],
        WEBHOOK_WORKER: [
            *celery, "worker.webhook_worker", "worker",
            "--pool", "threads", "--concurrency", str(webhook_concurrency), "-Q", "webhooks",
            *webhook_log,
            "-n", node_name("webhooks", node_tag),
        ],
        API: [python, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port)],
    }
