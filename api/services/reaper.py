"""Every job ends: running jobs whose worker stopped are taken back within a bounded time.

A generation worker that crashes, hangs, is stopped or loses Redis leaves its job
``running``; the broker would hand its task to another worker only after the visibility
timeout (an hour), and a task Celery killed at the hard time limit is acknowledged and
never comes back. Every API process runs this loop: each round the job store looks at
the running jobs (an index, not a scan), and takes back those whose claiming worker no
longer beats for them or that ran past the hard time limit plus a grace, each in one
script that only one of the racing API processes wins (``JobStore.reclaim_stalled``).
A job taken back with attempts left is queued again, and its task is published again
here, carrying only the job id as at submit; the others are failed (``worker_lost``,
``timeout``) or canceled.

A dead worker is noticed within the heartbeat's lifetime plus one interval of this loop
(LATENTD_HEARTBEAT_INTERVAL_SECONDS x 3 + LATENTD_REAPER_INTERVAL_SECONDS).
"""

from __future__ import annotations

import asyncio
import logging

from celery import Celery
from starlette.concurrency import run_in_threadpool

from api.services.jobs import publish_generation
from shared.jobstore import JobStore
from shared.records import JobRecord
from shared.schemas import JobStatus

logger = logging.getLogger(__name__)


def reap_stalled_jobs(store: JobStore, celery: Celery, now: float | None = None
                      ) -> list[JobRecord]:
    """One round: take back the stalled running jobs and publish the re-queued ones' tasks
    again; returns the jobs as this round left them."""
    reaped = []
    for job in store.reclaim_stalled(now):
        if job.status is JobStatus.QUEUED:
            job = publish_generation(store, celery, job)
        logger.warning("job %s: taken back from its stalled worker; %s", job.id, _outcome(job))
        reaped.append(job)
    return reaped


async def reap_forever(store: JobStore, celery: Celery, interval_seconds: float) -> None:
    while True:
        try:
            await run_in_threadpool(reap_stalled_jobs, store, celery)
        except Exception:  # Redis down for a while: try again next round
            logger.exception("reaping stalled jobs failed")
        await asyncio.sleep(interval_seconds)


def _outcome(job: JobRecord) -> str:
    if job.status is JobStatus.QUEUED:
        return f"queued again (attempt {job.attempts} ran)"
    return f"{job.status.value}: {job.error.code.value if job.error else '?'}"
