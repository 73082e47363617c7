"""Job reads on the serving event loop: the store's own read script over ``redis.asyncio``.

The API answers ``GET /v1/jobs/{id}``, ``Prefer: wait`` and SSE from asyncio; a sync
client there costs a thread-pool hop per read. This reads the job with the very script
``JobStore.get`` runs (wire.py ``READ``: one round trip, the whole job, decoded by the one
decoder), so both give the same record. Writes stay in ``JobStore``.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from shared.jobstore import keys
from shared.jobstore.wire import READ, decode_reply
from shared.records import JobRecord


class AsyncJobReader:
    """``await get(job_id)``: the job as Redis holds it, or None. ``client`` decodes
    responses (``decode_responses=True``), like the store's."""

    def __init__(self, client: aioredis.Redis):
        self._read = client.register_script(READ)

    async def get(self, job_id: str) -> JobRecord | None:
        reply = await self._read(keys=[keys.job_key(job_id), keys.webhooks_key(job_id)],
                                 args=[job_id])
        decoded = decode_reply(reply)
        return None if decoded is None else decoded[0].job
