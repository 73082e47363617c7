"""shared.celery_app: apps are built by each process's composition root, never by an import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shared.celery_app import PRIORITY_LEVELS, make_celery
from shared.schemas import Priority
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]

# Everything but the two worker entry modules, which are composition roots themselves.
LIBRARY_MODULES = [
    "api.main", "api.state", "api.deps", "api.services.jobs", "api.services.events",
    "shared.celery_app", "shared.jobstore", "shared.webhooks", "shared.plan",
    "shared.model_registry", "worker.tasks", "worker.webhook_tasks", "worker.engine",
]


def test_importing_the_library_builds_no_celery_app_and_no_connection() -> None:
    check = (
        "import sys, celery._state as state\n"
        f"for name in {LIBRARY_MODULES!r}: __import__(name)\n"
        "apps = list(state._apps)\n"
        "assert not apps, apps\n"
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=False,
                            env={"PATH": "/usr/bin:/bin", "LATENTD_DEFAULT_MODEL": "nope"})
    # A bad setting would fail any import that read the settings: none may.
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_built_app_takes_its_broker_and_limits_from_the_settings() -> None:
    settings = Settings(redis_url="redis://example.invalid:6379/3", task_soft_time_limit=10,
                        task_time_limit=20, broker_visibility_timeout=60)
    app = make_celery(settings)
    assert app.conf.broker_url == settings.redis_url
    assert (app.conf.task_soft_time_limit, app.conf.task_time_limit) == (10, 20)
    assert app.conf.broker_transport_options["visibility_timeout"] == 60
    assert app.conf.task_acks_late and app.conf.worker_prefetch_multiplier == 1
    # Kombu's Redis transport serves lower numbers first.
    assert PRIORITY_LEVELS[Priority.HIGH] < PRIORITY_LEVELS[Priority.NORMAL] < PRIORITY_LEVELS[
        Priority.LOW]


def test_fair_share_moves_a_flooding_keys_jobs_back_within_their_band() -> None:
    from shared.priorities import PRIORITY_BANDS, queue_level

    for priority, band in PRIORITY_BANDS.items():
        levels = [queue_level(priority, queued) for queued in (0, 1, 3, 4, 15, 16, 10_000)]
        assert levels == sorted(levels) and set(levels) <= set(band)
        assert levels[0] == band[0] and levels[-1] == band[-1]
    # No flood in a band reaches the next band: high stays ahead of normal, normal of low.
    assert queue_level(Priority.HIGH, 10_000) < queue_level(Priority.NORMAL, 0)
    assert queue_level(Priority.NORMAL, 10_000) < queue_level(Priority.LOW, 0)
