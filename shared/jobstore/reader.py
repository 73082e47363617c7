"""Job reads on the serving event loop: the store's own read script over ``redis.asyncio``.

The API answers ``GET /v1/jobs/{id}``, ``Prefer: wait`` and SSE from asyncio; a sync
client there costs a thread-pool hop per read. This reads the job with the very script
``JobStore.get`` runs (wire.py ``READ``: the whole job, decoded by the one decoder), so
both give the same record. Writes stay in ``JobStore``.

Reads asked for while one is on its way to Redis go together in the next script call
(wire.py ``READ_MANY``): one round trip, one command to encode and one reply to parse for
however many jobs clients poll at once, instead of one each. Each read is sent after it
was asked for, so it is as fresh as one sent on its own; a read with none beside it goes
out at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from shared.jobstore import keys
from shared.jobstore.wire import READ_MANY, decode_event
from shared.records import JobRecord

# Job ids in one script call at most: a long call holds Redis (single-threaded) from
# everything else, and its reply is held in memory whole.
MAX_READS_PER_CALL = 256


class ReadCoalescer:
    """``await read(key)``: ``read_many``'s answer for ``key``, with every other key asked
    for in the meantime sent in the same ``read_many`` call.

    At most one call is in flight. Keys asked for during it wait for it to end and go in
    the next one, so no answer is older than its question. One event loop's: the futures
    and the flight belong to the loop that runs them.
    """

    def __init__(self, read_many: Callable[[list[str]], Awaitable[list[str | None]]],
                 max_per_call: int = MAX_READS_PER_CALL):
        self._read_many = read_many
        self._max_per_call = max_per_call
        self._asked: list[tuple[str, asyncio.Future[str | None]]] = []
        self._flight: asyncio.Task[None] | None = None

    def read(self, key: str) -> asyncio.Future[str | None]:
        """A future of ``key``'s answer, sent in the next call: await it, or cancel it if
        the answer is no longer wanted. A failed call fails each of its futures."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()
        self._asked.append((key, future))
        if self._flight is None:
            self._flight = loop.create_task(self._fly())
        return future

    async def _fly(self) -> None:
        batch: list[tuple[str, asyncio.Future[str | None]]] = []
        try:
            while self._asked:
                batch = self._asked[:self._max_per_call]
                del self._asked[:self._max_per_call]
                await self._answer(batch)
        finally:
            # Cancelled (the loop is closing): nobody is left to send the rest.
            for _, future in batch + self._asked:
                future.cancel()
            self._asked.clear()
            self._flight = None

    async def _answer(self, batch: list[tuple[str, asyncio.Future[str | None]]]) -> None:
        unique = list(dict.fromkeys(key for key, future in batch if not future.done()))
        if not unique:
            return  # every asker gave up while waiting
        try:
            replies = dict(zip(unique, await self._read_many(unique), strict=True))
        except Exception as error:  # noqa: BLE001 - handed to each asker, who raises it
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for key, future in batch:
            if not future.done():
                future.set_result(replies[key])


class AsyncJobReader:
    """``await get(job_id)``: the job as Redis holds it, or None. ``client`` decodes
    responses (``decode_responses=True``), like the store's. One per event loop."""

    def __init__(self, client: aioredis.Redis):
        self._read_many_script = client.register_script(READ_MANY)
        self._reads = ReadCoalescer(self._read_messages)

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
