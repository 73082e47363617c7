"""``GET /v1/jobs/{id}`` as response bytes: the job as its owner sees it, as JSON.

A job is read far more often than it changes (clients poll it), so the public JSON is
kept per read reply: the store's read script answers the same text for the same job
state (every write stamps a later ``updated_at``), so the same text always turns into
the same bytes, and a repeated read costs the round trip and a dict lookup instead of
validating the record, building the public ``Job`` and serializing it again.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from api.errors import NotFound
from api.services.auth import Caller
from shared.jobstore import AsyncJobReader
from shared.jobstore.wire import decode_event
from shared.records import JobRecord, public_job

# Replies kept: the jobs being polled at once. A reply is a few KiB.
CACHED_REPLIES = 512


def public_json(record: JobRecord) -> bytes:
    """The bytes FastAPI would send for ``public_job(record)`` as a ``Job`` response."""
    return public_job(record).model_dump_json(by_alias=True).encode()


class PublicJobReads:
    """The job's public JSON for a caller; built once per API process."""

    def __init__(self, reader: AsyncJobReader, cached_replies: int = CACHED_REPLIES):
        self._reader = reader
        self._cached_replies = cached_replies
        # reply text → (owner, public JSON), least recently read first
        self._by_reply: OrderedDict[str, tuple[str, bytes]] = OrderedDict()

    async def record(self, job_id: str, caller: Caller) -> JobRecord:
        """The job as stored, for ``Prefer: wait``; ``NotFound`` as ``read``'s."""
        record = await self._reader.get(job_id)
        if record is None or not caller.may_see(record.owner):
            raise _not_found(job_id)
        return record

    async def read(self, job_id: str, caller: Caller) -> bytes:
        """The job's public JSON; ``NotFound`` (404) for a missing job or another owner's."""
        return self.shown_to(caller, job_id, await self.fetch(job_id))

    async def fetch(self, job_id: str) -> tuple[str, bytes] | None:
        """The job's owner and public JSON, whoever asks (None: no such job). Show it only
        through ``shown_to``."""
        return self.from_reply(await self._reader.get_message(job_id))

    def ask(self, job_id: str) -> asyncio.Future[str | None]:
        """The job's read, sent now with the others of this moment; hand its answer to
        ``from_reply``. Split so that a route can check the caller's key while the job is
        on its way (cancel the future if the caller is refused)."""
        return self._reader.get_message(job_id)

    def from_reply(self, message: str | None) -> tuple[str, bytes] | None:
        """A read reply as (owner, public JSON), built once per reply text."""
        if message is None:
            return None
        hit = self._by_reply.get(message)
        if hit is None:
            record = decode_event(message).job
            hit = (record.owner, public_json(record))
            self._by_reply[message] = hit
            if len(self._by_reply) > self._cached_replies:
                self._by_reply.popitem(last=False)
        else:
            self._by_reply.move_to_end(message)
        return hit

    @staticmethod
    def shown_to(caller: Caller, job_id: str, fetched: tuple[str, bytes] | None) -> bytes:
        """``fetch``'s answer for ``caller``: a missing job and another owner's job are
        reported alike (404)."""
        if fetched is None or not caller.may_see(fetched[0]):
            raise _not_found(job_id)
        return fetched[1]


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"job '{job_id}' not found", "job_not_found")
