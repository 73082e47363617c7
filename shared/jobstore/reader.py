"""Job reads on the serving event loop: the store's own read script over ``redis.asyncio``.

The API answers ``GET /v1/jobs/{id}``, ``Prefer: wait`` and SSE from asyncio; a sync
client there costs a thread-pool hop per read. This reads the job as ``JobStore.get``
does (wire.py ``reply``, the ending of every job script: the whole job, decoded by the
one decoder), so both give the same record. Writes stay in ``JobStore``.

Reads asked for while one is on its way to Redis go together in the next script call
(wire.py ``READ_MANY``, through ``shared.read_coalescer.ReadCoalescer``): one round trip,
one command to encode and one reply to parse for however many jobs clients poll at once,
instead of one each.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from shared.jobstore import keys
from shared.jobstore.wire import READ_MANY, decode_event
from shared.read_coalescer import ReadCoalescer
from shared.records import JobRecord


class AsyncJobReader:
    """``await get(job_id)``: the job as Redis holds it, or None. ``client`` decodes
    responses (``decode_responses=True``), like the store's. One per event loop."""

    def __init__(self, client: aioredis.Redis):
        self._read_many_script = client.register_script(READ_MANY)
        self._reads: ReadCoalescer[str | None] = ReadCoalescer(self._read_messages)

    async def get(self, job_id: str) -> JobRecord | None:
        message = await self.get_message(job_id)
        return None if message is None else decode_event(message).job

    def get_message(self, job_id: str) -> asyncio.Future[str | None]:
        """The read script's reply as it came: ``{"type": …, "job": <record>}`` text
        (``decode_event`` reads it), or None. The same job state gives the same text.

        A future, sent with the other reads of this moment: a caller can ask, do other
        work (check the caller's key), then await it; cancel it if it no longer wants it."""
        return self._reads.read(job_id)

    async def _read_messages(self, job_ids: list[str]) -> list[str | None]:
        job_keys = [key for job_id in job_ids
                    for key in (keys.job_key(job_id), keys.webhooks_key(job_id))]
        replies = await self._read_many_script(keys=job_keys, args=job_ids)
        return [reply or None for reply in replies]
