"""Following a job live: ``Prefer: wait`` and the SSE stream, both on the job's pub/sub channel.

Every event carries the job as the store wrote it, so neither re-reads the job per
event. Both subscribe before reading the job, so an event published in between is never
missed (it waits in the subscription); an event whose ``updated_at`` is not after the
state already read is skipped, so none is reported twice (the store stamps each write of
a job strictly later than the one before).

A submit that waits (``submit_and_wait``) takes its place under the stream caps before
its job is stored, so a wait they refuse costs nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import redis
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.errors import NotFound
from api.services.auth import Caller
from api.services.event_hub import EventHub, StreamSlot, Subscription
from api.services.jobs import Submission
from shared.jobstore import JobStore
from shared.records import JobEvent, JobRecord, public_job
from shared.schemas import EventType, JobStatus

# Pub/sub is fire-and-forget (a Redis restart drops messages), so a quiet wait or stream
# re-reads the job this often and ends if it finished unseen.
RECHECK_SECONDS = 15.0
# What can end a submit's wait early once its job exists: Redis away, or not confirming
# the subscription in time.
WAIT_ERRORS = (redis.RedisError, TimeoutError)


def event_for_status(status: JobStatus) -> EventType:
    """The event that announces a job already in ``status``."""
    if status.is_terminal():
        return EventType.COMPLETED
    return EventType.STARTED if status is JobStatus.RUNNING else EventType.QUEUED


class JobReader(Protocol):
    """Reads a job on the event loop (``shared.jobstore.AsyncJobReader``)."""

    async def get(self, job_id: str) -> JobRecord | None: ...


@dataclass(frozen=True)
class WaitedSubmission:
    """What ``JobEvents.submit_and_wait`` did: the submission, and the job once waited
    for; ``wait_error`` says why the wait failed (``job`` is then as stored), else None."""

    submission: Submission
    job: JobRecord
    wait_error: Exception | None = None


@dataclass
class JobEvents:
    """Job events through the process's one pub/sub connection (``hub``); the job is read
    on the event loop (``reader``), with no thread-pool hop."""

    hub: EventHub
    reader: JobReader

    async def wait(self, record: JobRecord, seconds: float) -> JobRecord:
        """The job once it is terminal, or as it stands after ``seconds``, whichever is first.

        ``record`` is the job as the caller last read it; it comes back unchanged when it
        is already terminal, ``seconds <= 0``, or the job is deleted meanwhile.
        """
        if seconds <= 0 or record.status.is_terminal():
            return record
        async with self.hub.reserve(record.owner) as slot:
            return await self._wait_in(slot, record, seconds)

    async def submit_and_wait(self, submit: Callable[[], Submission], owner: str,
                              seconds: float) -> WaitedSubmission:
        """Run ``submit`` (on the thread pool), then ``wait`` for the job it answers with.

        The wait's place under the stream caps is taken first, so their 429/503 come
        before anything is stored. Once the job exists, a failed wait is handed back in
        ``wait_error`` beside the job as stored, never raised: the caller names the job.
        (The subscription itself comes after the submit, off the job's path: it and its
        read overlap the worker's pick-up of the job.) A wait of ``seconds <= 0`` takes no
        place.
        """
        if seconds <= 0:
            submission = await run_in_threadpool(submit)
            return WaitedSubmission(submission, submission.job)
        async with self.hub.reserve(owner) as slot:
            submission = await run_in_threadpool(submit)
            try:
                job = await self._wait_in(slot, submission.job, seconds)
            except WAIT_ERRORS as exc:
                return WaitedSubmission(submission, submission.job, exc)
        return WaitedSubmission(submission, job)

    async def _wait_in(self, slot: StreamSlot, record: JobRecord, seconds: float) -> JobRecord:
        """``wait``'s following, within ``slot``; ``seconds`` > 0."""
        # A submit's job may be finished already: a replay, or failed as it was published.
        if record.status.is_terminal():
            return record
        deadline = time.monotonic() + seconds
        async with slot.follow(JobStore.channel(record.id)) as subscription:
            current = await self._read(record.id)
            if current is None:
                return record
            while not current.status.is_terminal():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                event = await _next_event(subscription, min(left, RECHECK_SECONDS))
                if event is not None:
                    if event.job.updated_at > current.updated_at:
                        current = event.job
                elif left > RECHECK_SECONDS:  # quiet: make sure it did not end unseen
                    current = await self._read(record.id) or current
            return current

    async def stream(self, job_id: str, caller: Caller) -> AsyncIterator[dict[str, str]]:
        """SSE events ``{"event": <type>, "data": <public job JSON>}``: the job's current
        state, then each change as it was written, ending after ``completed``.

        Raises ``NotFound`` before the stream starts when the job does not exist or
        belongs to another owner.
        """
        following = contextlib.AsyncExitStack()
        subscription = await following.enter_async_context(
            self.hub.subscribe(JobStore.channel(job_id), caller.owner))
        try:
            record = await self._read(job_id)
        except BaseException:
            await following.aclose()
            raise
        if record is None or not caller.may_see(record.owner):
            await following.aclose()
            raise NotFound(f"job '{job_id}' not found", "job_not_found")
        return self._relay(following, subscription, record)

    async def _relay(self, following: contextlib.AsyncExitStack, subscription: Subscription,
                     record: JobRecord) -> AsyncIterator[dict[str, str]]:
        try:
            yield _sse(event_for_status(record.status), record)
            last = record
            while not last.status.is_terminal():
                event = await _next_event(subscription, RECHECK_SECONDS)
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
            await following.aclose()

    async def _read(self, job_id: str) -> JobRecord | None:
        return await self.reader.get(job_id)


async def _next_event(subscription: Subscription, timeout: float) -> JobEvent | None:
    """The next event on the subscription, or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = await subscription.next(left)
        if message is None:
            return None
        try:
            return JobStore.decode_event(message)
        except (ValidationError, ValueError):
            continue
    return None


def _sse(event: EventType, record: JobRecord) -> dict[str, str]:
    return {"event": event.value, "data": public_job(record).model_dump_json()}
