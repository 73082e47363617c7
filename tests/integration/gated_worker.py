"""The generation worker the integration tests run: the real one, plus a gate (and a
poison switch, for a job that fails on every run).

A job submitted with ``metadata: {"hold": true}`` stops after its first step (progress
already published) until the test releases it, so a test can cancel, queue more work or
kill the worker while a job is known to be mid-run, instead of hoping it is slow enough.
``celery -A tests.integration.gated_worker worker ...`` (scripts/service_processes.py).
"""

from __future__ import annotations

import redis

from tests.integration.gate import (
    HOLD_METADATA_KEY,
    POISON_METADATA_KEY,
    RELEASE_SECONDS,
    release_key,
)
from worker import tasks
from worker.generation_worker import app, settings

__all__ = ["app"]

_report_step = tasks.ProgressReporter.__call__
# Its own socket timeout: redis-py's default (5 s) would end the BLPOP before the release.
_client = redis.Redis.from_url(settings.redis_url, socket_timeout=RELEASE_SECONDS + 5)


def _held_report(self: tasks.ProgressReporter, step: int, total_steps: int) -> bool:
    stop = _report_step(self, step, total_steps)
    if step != 1 or stop:
        return stop
    job = self.store.get(self.job_id)
    if job is not None and (job.metadata or {}).get(POISON_METADATA_KEY):
        raise RuntimeError("poisoned by the test (metadata.poison)")
    if job is not None and (job.metadata or {}).get(HOLD_METADATA_KEY):
        _client.blpop([release_key(self.job_id)], timeout=RELEASE_SECONDS)
        return self.store.is_cancel_requested(self.job_id)
    return stop


tasks.ProgressReporter.__call__ = _held_report  # type: ignore[method-assign]
