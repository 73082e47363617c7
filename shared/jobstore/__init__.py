"""Jobs in Redis: the state machine every status change goes through (see store.py).

Modules: ``keys`` (every key name), ``wire`` (the JSON a job leaves Redis in, one
decoder), ``store`` (``JobStore``: create, read, transitions), ``listing`` (an owner's
jobs by page), ``idempotency`` (Idempotency-Key records), ``expiry`` (the expiry index),
``webhook_log`` (delivery attempts on the job), ``reader`` (``AsyncJobReader``: the same
read for asyncio callers).
"""

from shared.jobstore.idempotency import IdempotencyConflict
from shared.jobstore.reader import AsyncJobReader
from shared.jobstore.store import EventHook, JobStore

__all__ = ["AsyncJobReader", "EventHook", "IdempotencyConflict", "JobStore"]
