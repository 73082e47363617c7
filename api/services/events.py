"""Following a job live: ``Prefer: wait`` and the SSE stream, both on the job's pub/sub channel.

Every event carries the job as the store wrote it, so neither re-reads the job per
event. Both subscribe before reading the job, so an event published in between is never
missed (it waits in the subscription); an event whose ``updated_at`` is not after the
state already read is skipped, so none is reported twice (the store stamps each write of
a job strictly later than the one before).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.client import PubSub
from starlette.concurrency import run_in_threadpool

from api.errors import NotFound
from shared.jobstore import JobStore
from shared.records import JobEvent, JobRecord, public_job
from shared.schemas import EventType, JobStatus

# Pub/sub is fire-and-forget (a Redis restart drops messages), so a quiet wait or stream
# re-reads the job this often and ends if it finished unseen.
RECHECK_SECONDS = 15.0
SUBSCRIBE_TIMEOUT_SECONDS = 5.0


def event_for_status(status: JobStatus) -> EventType:
    """The event that announces a job already in ``status``."""
    if status.is_terminal():
        return EventType.COMPLETED
    return EventType.STARTED if status is JobStatus.RUNNING else EventType.QUEUED


@dataclass
class JobEvents:
    """Job events for one request; ``store`` is sync, so its reads go to a thread."""

    redis: aioredis.Redis
    store: JobStore

    async def wait(self, record: JobRecord, seconds: float) -> JobRecord:
        """The job once it is terminal, or as it stands after ``seconds``, whichever is first.

        ``record`` is the job as the caller last read it; it comes back unchanged when it
        is already terminal, ``seconds <= 0``, or the job is deleted meanwhile.
        """
        if seconds <= 0 or record.status.is_terminal():
            return record
        deadline = time.monotonic() + seconds
        pubsub = await self._subscribe(record.id)
        try:
            current = await self._read(record.id)
            if current is None:
                return record
            while not current.status.is_terminal():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                event = await _next_event(pubsub, min(left, RECHECK_SECONDS))
                if event is not None:
                    if event.job.updated_at > current.updated_at:
                        current = event.job
                elif left > RECHECK_SECONDS:  # quiet: make sure it did not end unseen
                    current = await self._read(record.id) or current
            return current
        finally:
            await _close(pubsub)

    async def stream(self, job_id: str, owner: str) -> AsyncIterator[dict[str, str]]:
        """SSE events ``{"event": <type>, "data": <public job JSON>}``: the job's current
        state, then each change as it was written, ending after ``completed``.

        Raises ``NotFound`` before the stream starts when the job does not exist or
        belongs to another owner.
        """
        pubsub = await self._subscribe(job_id)
        try:
            record = await self._read(job_id)
        except BaseException:
            await _close(pubsub)
            raise
        if record is None or record.owner != owner:
            await _close(pubsub)
            raise NotFound(f"job '{job_id}' not found", "job_not_found")
        return self._relay(pubsub, record)

    async def _relay(self, pubsub: PubSub, record: JobRecord) -> AsyncIterator[dict[str, str]]:
        try:
            yield _sse(event_for_status(record.status), record)
            last = record
            while not last.status.is_terminal():
                event = await _next_event(pubsub, RECHECK_SECONDS)
                if event is None:  # quiet for a while: make sure it did not end unseen
                    current = await self._read(last.id)
                    if current is None:  # deleted while we watched
                        return
                    if current.status.is_terminal():
                        yield _sse(EventType.COMPLETED, current)
                        return
                    continue
                if event.job.updated_at <= last.updated_at:
                    continue  # published before the state already sent
                last = event.job
                yield _sse(event.type, last)
        finally:
            await _close(pubsub)

    async def _subscribe(self, job_id: str) -> PubSub:
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(JobStore.channel(job_id))
            # Only once Redis confirms is every later event sure to reach us; the first
            # read of the job must come after that.
            with anyio.fail_after(SUBSCRIBE_TIMEOUT_SECONDS):
                while (await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_SECONDS)) is None:
                    pass
        except BaseException:
            await _close(pubsub)
            raise
        return pubsub

    async def _read(self, job_id: str) -> JobRecord | None:
        return await run_in_threadpool(self.store.get, job_id)


async def _next_event(pubsub: PubSub, timeout: float) -> JobEvent | None:
    """The next event on the subscription, or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(timeout=left)
        if message is None or message.get("type") != "message":
            continue
        try:
            return JobStore.decode_event(message["data"])
        except ValidationError:
            continue
    return None


def _sse(event: EventType, record: JobRecord) -> dict[str, str]:
    return {"event": event.value, "data": public_job(record).model_dump_json()}


async def _close(pubsub: PubSub) -> None:
    # Shielded: a disconnected SSE client cancels the stream, and the connection must
    # still go back; errors while closing must not hide the one that ended the stream.
    with anyio.move_on_after(2, shield=True), contextlib.suppress(Exception):
        await pubsub.aclose()
