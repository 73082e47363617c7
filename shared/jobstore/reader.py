"""Job reads on the serving event loop: the store's own read script over ``redis.asyncio``.

The API answers ``GET /v1/jobs/{id}``, ``Prefer: wait`` and SSE from asyncio; a sync
client there costs a thread-pool hop per read. This reads the job with the very script
``JobStore.get`` runs (wire.py ``READ``: one round trip, the whole job, decoded by the one
decoder), so both give the same record. Writes stay in ``JobStore``.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from shared.jobstore import keys
from shared.jobstore.wire import READ, decode_event
from shared.records import JobRecord


class AsyncJobReader:
    """``await get(job_id)``: the job as Redis holds it, or None. ``client`` decodes
    responses (``decode_responses=True``), like the store's."""

    def __init__(self, client: aioredis.Redis):
        self._read = client.register_script(READ)

    async def get(self, job_id: str) -> JobRecord | None:
        message = await self.get_message(job_id)
        return None if message is None else decode_event(message).job

    async def get_message(self, job_id: str) -> str | None:
        """The read script's reply as it came: ``{"type": …, "job": <record>}`` text
        (``decode_event`` reads it), or None. The same job state gives the same text."""
        reply = await self._read(keys=[keys.job_key(job_id), keys.webhooks_key(job_id)],
                                 args=[job_id])
        if not reply:
            return None
        _, message = reply
        return message
