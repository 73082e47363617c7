"""Outputs leave storage when their job's record expires (``LATENTD_JOB_TTL_SECONDS``).

Redis expires the records by itself; images need someone to delete them. Every API
process sweeps: deleting a prefix twice is harmless, so replicas need no coordination.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from shared.jobstore import JobStore
from shared.storage import Storage, job_prefix

logger = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 60


def sweep_expired_outputs(store: JobStore, storage: Storage, now: float | None = None) -> int:
    """Delete the stored files of every job past its TTL; returns how many jobs."""
    swept = 0
    while job_ids := store.pop_expired(now):
        for job_id in job_ids:
            storage.delete_prefix(job_prefix(job_id))
        swept += len(job_ids)
    return swept


async def sweep_forever(store: JobStore, storage: Storage) -> None:
    while True:
        try:
            swept = await run_in_threadpool(sweep_expired_outputs, store, storage)
            if swept:
                logger.info("deleted the outputs of %d expired job(s)", swept)
        except Exception:  # Redis down for a while: try again next round
            logger.exception("expired-output sweep failed")
        await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
