"""Following a job live: ``Prefer: wait`` and the SSE stream, both on the job's pub/sub channel.

Both subscribe before reading the job's state, so an event published in between is
never missed (it waits in the subscription); events older than the state read are
skipped, so none is reported twice.
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
from shared.schemas import EventType, Job, JobEvent, JobStatus, Metrics, Progress

# Pub/sub is fire-and-forget (a Redis restart drops messages), so an idle stream
# re-reads the job this often and closes if it finished unseen.
RECHECK_SECONDS = 15.0

# Order of events in a job's life; an event behind the state already reported is stale.
_RANK = {EventType.QUEUED: 0, EventType.STARTED: 1, EventType.PROGRESS: 1,
         EventType.COMPLETED: 2}


def event_for_status(status: JobStatus) -> EventType:
    """The event that announces a job already in ``status``."""
    if status.is_terminal():
        return EventType.COMPLETED
    return EventType.STARTED if status is JobStatus.RUNNING else EventType.QUEUED


@dataclass
class JobEvents:
    """Reads job events for one request; ``store`` is sync, so reads go to a thread."""

    redis: aioredis.Redis
    store: JobStore

    async def _subscribe(self, job_id: str) -> PubSub:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(JobStore.channel(job_id))
        return pubsub

    async def _read(self, job_id: str) -> Job | None:
        return await run_in_threadpool(self.store.get, job_id)

    async def wait(self, job: Job, seconds: float) -> Job:
        """``job`` re-read once it is terminal or ``seconds`` have passed, whichever is first."""
        if seconds <= 0 or job.status.is_terminal():
            return job
        deadline = time.monotonic() + seconds
        pubsub = await self._subscribe(job.id)
        try:
            current = await self._read(job.id)
            while current is not None and not current.status.is_terminal():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                event = await _next_event(pubsub, min(left, RECHECK_SECONDS))
                if event is None or event.type is EventType.COMPLETED:
                    current = await self._read(job.id)
            return current or job
        finally:
            await _close(pubsub)

    async def stream(self, job_id: str, owner: str) -> AsyncIterator[dict[str, str]]:
        """SSE events for the job: its current state, then each change until completed.

        Raises ``NotFound`` before the stream starts when the job does not exist.
        """
        pubsub = await self._subscribe(job_id)
        try:
            job = await self._read(job_id)
        except BaseException:
            await _close(pubsub)
            raise
        if job is None or job.owner != owner:
            await _close(pubsub)
            raise NotFound(f"job '{job_id}' not found", "job_not_found")
        return self._relay(pubsub, job)

    async def _relay(self, pubsub: PubSub, job: Job) -> AsyncIterator[dict[str, str]]:
        try:
            last = event_for_status(job.status)
            yield _sse(last, job)
            while last is not EventType.COMPLETED:
                event = await _next_event(pubsub, RECHECK_SECONDS)
                if event is None:  # quiet for a while: make sure it did not end unseen
                    current = await self._read(job.id)
                    if current is None:
                        return
                    if current.status.is_terminal():
                        yield _sse(EventType.COMPLETED, current)
                        return
                    continue
                stale = _RANK[event.type] < _RANK[last] or (
                    event.type is last and event.type is not EventType.PROGRESS
                )
                if stale:
                    continue
                current = await self._read(job.id)
                if current is None:  # deleted while we watched
                    return
                last = event.type
                yield _sse(event.type, _as_of(current, event))
        finally:
            await _close(pubsub)


async def _next_event(pubsub: PubSub, timeout: float) -> JobEvent | None:
    """The next event on the subscription, or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(timeout=left)
        if message is None or message.get("type") != "message":
            continue
        try:
            return JobEvent.model_validate_json(message["data"])
        except ValidationError:
            continue
    return None


def _as_of(job: Job, event: JobEvent) -> Job:
    """The job as of ``event``: relaying lags the store, and a fast job may already be done."""
    if event.type is EventType.COMPLETED:
        return job
    update: dict[str, object] = {"status": event.status, "updated_at": event.at}
    if event.progress is not None:
        update["progress"] = event.progress
    elif event.type is EventType.STARTED:  # no step has run yet in this attempt
        update["progress"] = Progress()
    if job.status.is_terminal():  # what the finish wrote did not exist yet
        update.update(finished_at=None, images=[], error=None, metrics=Metrics())
    return job.model_copy(update=update)


def _sse(event: EventType, job: Job) -> dict[str, str]:
    return {"event": event.value, "data": job.model_dump_json()}


async def _close(pubsub: PubSub) -> None:
    # Shielded: a disconnected SSE client cancels the stream, and the connection must
    # still go back; errors while closing must not hide the one that ended the stream.
    with anyio.move_on_after(2, shield=True), contextlib.suppress(Exception):
        await pubsub.aclose()
