"""The job state machine: ``queued → running → succeeded | failed | canceled``.

Every change is one Lua script (transitions.py) that checks the current status, writes
the change with its time stamps, reads the whole job back, publishes it on the job's
channel and returns it (wire.py), all atomically: two racing transitions cannot both
win, a terminal job never changes, and every transition emits exactly one event carrying
the job as written. ``JobStore`` is the one door to it, and to the listing, the expiry
index and the webhook log beside it.

A worker claims a job under its heartbeat name (``mark_running(job_id, worker)``) and
names itself on every later move, which then applies only while its claim stands: once
the reaper has re-queued the job (its worker stopped beating) or another worker has
claimed it, a late write of the old run changes nothing. The running index (claim times)
is what the reaper reads, so it never scans all jobs.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from shared.batching import batch_signature
from shared.heartbeat import HEARTBEAT_PREFIX
from shared.jobstore import idempotency, keys
from shared.jobstore.expiry import ExpiryIndex
from shared.jobstore.idempotency import IdempotencyConflict
from shared.jobstore.listing import JobListing
from shared.jobstore.transitions import (
    CLAIM,
    CLAIM_COMPANIONS,
    CREATE,
    ID_IN_USE,
    QUEUE_EPOCH_US,
    RECLAIM,
    REQUEST_CANCEL,
    TRANSITION,
    queue_weight,
    score_range,
)
from shared.jobstore.webhook_log import WebhookLog
from shared.jobstore.wire import READ, decode_event, decode_reply, encode_doc
from shared.metrics import encode_labels
from shared.priorities import band_of, queue_level_of
from shared.records import JobEvent, JobRecord, OutputImage
from shared.schemas import (
    ErrorCode,
    EventType,
    JobError,
    JobStatus,
    Metrics,
    Progress,
    WebhookAttempt,
)
from shared.settings import Settings

log = logging.getLogger(__name__)

EventHook = Callable[[JobRecord, EventType], None]

_CANCELED = JobError(code=ErrorCode.CANCELED, message="the job was canceled")
# Running jobs the reaper looks at per round trip.
_RECLAIM_BATCH = 500
# Queued jobs of a batch set a claim of companions looks at (skipping the ones that do
# not fit): bounds the script's time however long the queue.
_COMPANION_CANDIDATES = 64


@dataclass(frozen=True)
class _Move:
    """A TRANSITION: from one of ``from_`` to ``to``, announced as ``event``, writing
    ``fields``; ``max_attempts`` > 0 counts an attempt (the job fails with ``exhausted``
    once they ran out); with ``claimant``, only under that worker's claim."""

    from_: tuple[JobStatus, ...]
    to: JobStatus
    event: EventType
    fields: dict[str, str]
    max_attempts: int = 0
    exhausted: JobError | None = None
    claimant: str | None = None

    def args(self, job_id: str) -> list[str | int]:
        """The script's ARGV for ``job_id`` (transitions.py, TRANSITION's comment)."""
        pairs = [item for field in self.fields.items() for item in field]
        return [job_id, keys.channel(job_id), " ".join(self.from_), self.to, self.event,
                self.max_attempts, self.exhausted.model_dump_json() if self.exhausted else "",
                self.claimant or "", *pairs]


@dataclass(frozen=True)
class Claim:
    """A job claimed for a run; how many queued jobs shared its batch set right after the
    claim (of any priority band; 0 when it always runs alone: with none, a worker has no
    companions to look for, ``claim_companions``); and ``is_cancel_requested`` as it
    stood right after the claim (a redelivered job its owner canceled while it ran)."""

    job: JobRecord
    batch_waiting: int
    cancel_requested: bool


class JobStore:
    """Create, read and move jobs; every method returns the job as Redis now holds it.

    ``client`` must decode responses (``decode_responses=True``). ``on_event`` is called
    after each transition with the record it wrote (webhooks hang off it).
    """

    def __init__(self, client: redis.Redis, settings: Settings, on_event: EventHook | None = None):
        self._redis = client
        self._ttl = settings.job_ttl_seconds
        self._max_attempts = settings.task_max_attempts
        self._hard_limit = settings.task_time_limit
        self._reclaim_grace = settings.reaper_grace_seconds
        self._heartbeat_ttl = settings.heartbeat_ttl_seconds
        self._on_event = on_event
        self._create = client.register_script(CREATE)
        self._transition = client.register_script(TRANSITION)
        self._reclaim = client.register_script(RECLAIM)
        self._claim_companions = client.register_script(CLAIM_COMPANIONS)
        self._claim = client.register_script(CLAIM)
        self._request_cancel = client.register_script(REQUEST_CANCEL)
        self._read = client.register_script(READ)
        self._listing = JobListing(client, self._read_many)
        self._expiry = ExpiryIndex(client)
        self._webhooks = WebhookLog(client)

    @staticmethod
    def new_job_id() -> str:
        return "job_" + secrets.token_hex(12)

    @staticmethod
    def channel(job_id: str) -> str:
        return keys.channel(job_id)

    @staticmethod
    def decode_event(data: str | bytes) -> JobEvent:
        """A message from ``channel(job_id)``: the event and the job as it wrote it."""
        return decode_event(data)

    # -- creation and reads -------------------------------------------------------

    def create(
        self,
        record: JobRecord,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Store a new queued job: ``(job, True)``; ``(earlier job, False)`` when the
        Idempotency-Key names a live job made from the same ``fingerprint``.

        Only the record's immutable part is taken; the store stamps ``created_at`` and
        ``updated_at`` on Redis's clock. Raises ``IdempotencyConflict`` when the key's
        job was made from another body, ``ValueError`` for a record not queued or an id
        already in use.
        """
        if record.status is not JobStatus.QUEUED:
            raise ValueError("new jobs start queued")
        idem_key = keys.idempotency_key(record.owner, idempotency_key) if idempotency_key else ""
        reply = self._create(
            keys=[keys.job_key(record.id), keys.webhooks_key(record.id),
                  keys.owner_key(record.owner), keys.queue_key(record.request.model),
                  idem_key, keys.EXPIRY_KEY, _batch_key(record)],
            args=[record.id, keys.channel(record.id), encode_doc(record), self._ttl,
                  queue_weight(queue_level_of(record)),
                  idempotency.key_record(record.id, fingerprint), fingerprint or "",
                  keys.JOB_KEY_PREFIX, keys.WEBHOOKS_SUFFIX, QUEUE_EPOCH_US,
                  encode_labels([record.request.model])],
        )
        if reply[0] == idempotency.CONFLICT:
            raise IdempotencyConflict(reply[1])
        if reply[0] == ID_IN_USE:
            raise ValueError(f"job {record.id} already exists")
        event = self._applied(reply)
        assert event is not None
        return event.job, bool(reply[0])  # published: new; not: the replayed earlier job

    def get(self, job_id: str) -> JobRecord | None:
        decoded = decode_reply(self._read(keys=self._keys(job_id), args=[job_id]))
        return None if decoded is None else decoded[0].job

    def list_jobs(
        self,
        owner: str,
        *,
        status: JobStatus | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> tuple[list[JobRecord], str | None]:
        """The owner's jobs, newest first, and the next page's cursor (see listing.py)."""
        return self._listing.list(owner, status=status, cursor=cursor, limit=limit)

    # -- transitions --------------------------------------------------------------

    def mark_running(self, job_id: str, worker: str = "") -> JobRecord | None:
        """Claim a job for ``worker`` (its heartbeat name), counting an attempt; ``None``: do
        not run it (it is finished, gone, or has been started too often and is now failed
        WORKER_LOST). A running job is claimed again: its task was redelivered because
        its worker died."""
        claim = self.claim(job_id, worker)
        return None if claim is None else claim.job

    def claim(self, job_id: str, worker: str = "") -> Claim | None:
        """``mark_running``, and in the same script what a run asks next: the number of
        queued jobs left in the claimed job's batch set (after the claim took it out of
        it), and whether the run should stop already."""
        move = _Move((JobStatus.QUEUED, JobStatus.RUNNING), JobStatus.RUNNING, EventType.STARTED,
                     {"progress": Progress().model_dump_json(), "worker": worker},
                     max_attempts=self._max_attempts, exhausted=self._worker_lost())
        moved, waiting, run_state = self._claim(keys=self._transition_keys(job_id),
                                                args=move.args(job_id))
        event = self._applied(moved)
        if event is None or event.type is not EventType.STARTED:
            return None
        return Claim(event.job, int(waiting), _should_stop(run_state, worker))

    def claim_companions(self, job: JobRecord, worker: str, max_images: int) -> list[JobRecord]:
        """Claim for ``worker`` queued jobs that can run in one pipeline call with ``job``
        (its batch signature), up to ``max_images`` images in all, best queue place first
        and only from ``job``'s priority band; each claimed exactly as ``mark_running``
        claims a job (an attempt counted, a ``started`` event). Returns the jobs claimed."""
        batch = _batch_key(job)
        if not batch or max_images <= 0:
            return []
        lowest, highest = score_range(band_of(queue_level_of(job)))
        replies = self._claim_companions(
            keys=[batch, keys.RUNNING_KEY],
            args=[worker, lowest, highest, max_images, self._max_attempts,
                  Progress().model_dump_json(), keys.JOB_KEY_PREFIX, keys.WEBHOOKS_SUFFIX,
                  keys.CHANNEL_PREFIX, _COMPANION_CANDIDATES],
        )
        claimed = []
        for reply in replies:
            event = self._applied(reply)
            if event is not None:
                claimed.append(event.job)
        return claimed

    def update_progress(
        self, job_id: str, step: int, total_steps: int, eta_seconds: float | None,
        worker: str | None = None,
    ) -> JobRecord | None:
        """Record progress; only while running (under ``worker``'s claim, when given), so a
        late step cannot touch a finished or re-queued job."""
        progress = Progress(step=step, total_steps=total_steps, eta_seconds=eta_seconds)
        event = self._move(job_id, _Move((JobStatus.RUNNING,), JobStatus.RUNNING,
                                         EventType.PROGRESS,
                                         {"progress": progress.model_dump_json()},
                                         claimant=worker))
        return None if event is None else event.job

    def mark_succeeded(
        self, job_id: str, images: list[OutputImage], metrics: Metrics, worker: str | None = None
    ) -> JobRecord | None:
        """Finish a running job with its images (only under ``worker``'s claim, when given)."""
        fields = {
            "images": json.dumps([image.model_dump(mode="json") for image in images]),
            "metrics": metrics.model_dump_json(),
        }
        return self._finish(job_id, JobStatus.SUCCEEDED, fields, (JobStatus.RUNNING,), worker)

    def mark_failed(
        self, job_id: str, code: ErrorCode, message: str, worker: str | None = None
    ) -> JobRecord | None:
        """Fail a running job, or a queued one (e.g. its model cannot load: no attempt used);
        with ``worker``, only the running job it claimed."""
        error = JobError(code=code, message=message).model_dump_json()
        return self._finish(job_id, JobStatus.FAILED, {"error": error},
                            (JobStatus.QUEUED, JobStatus.RUNNING), worker)

    def mark_canceled(self, job_id: str, worker: str | None = None) -> JobRecord | None:
        """Cancel a queued or running job; with ``worker``, only the running job it claimed."""
        return self._finish(job_id, JobStatus.CANCELED, {"error": _CANCELED.model_dump_json()},
                            (JobStatus.QUEUED, JobStatus.RUNNING), worker)

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """Cancel now if queued; ask the worker to stop if running; leave terminal jobs be.

        Returns the job as it now stands (``None``: no such job).
        """
        event = self._applied(self._request_cancel(
            keys=self._keys(job_id),
            args=[job_id, keys.channel(job_id), _CANCELED.model_dump_json()],
        ))
        return None if event is None else event.job

    def is_cancel_requested(self, job_id: str, worker: str | None = None) -> bool:
        """Should a run of the job stop: its owner canceled it, or it no longer exists
        (deleted mid-run). With ``worker``: also when the job is no longer running under
        that worker's claim (re-queued by the reaper, finished, or claimed by another)."""
        run_state = cast(list[str | None], self._redis.hmget(keys.job_key(job_id),
                                                            _RUN_STATE_FIELDS))
        return _should_stop(run_state, worker)

    def reclaim(self, job_id: str, now: float | None = None) -> JobRecord | None:
        """Take back one running job if its worker stopped (see ``reclaim_stalled``); the
        job as written, or ``None`` when it was left as it is (or another caller won)."""
        event = self._applied(self._reclaim(
            keys=self._transition_keys(job_id), args=self._reclaim_args(job_id, now)))
        return None if event is None else event.job

    def reclaim_stalled(self, now: float | None = None) -> list[JobRecord]:
        """Take back every running job whose worker stopped: its heartbeat expired or names
        another job, or it ran past the hard time limit plus the grace. Each is re-queued
        (``queued``: the caller publishes its task again), or failed ``timeout`` (past the
        hard limit), ``worker_lost`` (no attempt left), or canceled (its owner asked).

        ``now``: epoch seconds, default Redis's clock. Each job is one script, so reapers
        racing in several API processes change it once. Returns the jobs changed.
        """
        # As many ids as jobs running at once (about one per worker process).
        running = cast(list[str], self._redis.zrange(keys.RUNNING_KEY, 0, -1))
        changed: list[JobRecord] = []
        for first in range(0, len(running), _RECLAIM_BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for job_id in running[first:first + _RECLAIM_BATCH]:
                self._reclaim(keys=self._transition_keys(job_id),
                              args=self._reclaim_args(job_id, now), client=pipe)
            for reply in pipe.execute():
                event = self._applied(reply)
                if event is not None:
                    changed.append(event.job)
        return changed

    # -- the rest -----------------------------------------------------------------

    def delete(self, job_id: str) -> bool:
        """Remove the job and its index entries (its outputs are the caller's)."""
        doc, queue, batch = self._redis.hmget(keys.job_key(job_id), ["doc", "queue", "batch"])
        if doc is None:
            return False
        owner = json.loads(doc)["owner"]
        pipe = self._redis.pipeline()
        pipe.delete(keys.job_key(job_id), keys.webhooks_key(job_id))
        pipe.zrem(keys.owner_key(owner), job_id)
        for status in JobStatus:
            pipe.zrem(keys.owner_status_key(owner, status.value), job_id)
        if queue:
            pipe.zrem(queue, job_id)
        if batch:
            pipe.zrem(batch, job_id)
        pipe.zrem(keys.EXPIRY_KEY, job_id)
        pipe.zrem(keys.RUNNING_KEY, job_id)
        return pipe.execute()[0] > 0

    def record_webhook_attempt(self, job_id: str, attempt: WebhookAttempt) -> bool:
        return self._webhooks.record_webhook_attempt(job_id, attempt)

    def pop_expired(self, now: float | None = None, limit: int = 100) -> list[str]:
        return self._expiry.pop_expired(now, limit)

    def ping(self) -> bool:
        return bool(self._redis.ping())

    # -- internals ----------------------------------------------------------------

    @staticmethod
    def _keys(job_id: str) -> list[str]:
        return [keys.job_key(job_id), keys.webhooks_key(job_id)]

    @staticmethod
    def _transition_keys(job_id: str) -> list[str]:
        return [keys.job_key(job_id), keys.webhooks_key(job_id), keys.RUNNING_KEY]

    def _worker_lost(self) -> JobError:
        return JobError(
            code=ErrorCode.WORKER_LOST,
            message=f"the job was started {self._max_attempts} times and no worker finished it",
        )

    def _reclaim_args(self, job_id: str, now: float | None) -> list[Any]:
        timeout = JobError(
            code=ErrorCode.TIMEOUT,
            message=f"the job ran past the {self._hard_limit} s hard time limit without "
                    "finishing",
        )
        return [job_id, keys.channel(job_id), "" if now is None else repr(now),
                self._hard_limit, repr(float(self._reclaim_grace)),
                repr(float(self._heartbeat_ttl)), HEARTBEAT_PREFIX, self._max_attempts,
                timeout.model_dump_json(), self._worker_lost().model_dump_json(),
                _CANCELED.model_dump_json(), Progress().model_dump_json(), QUEUE_EPOCH_US]

    def _read_many(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            self._read(keys=self._keys(job_id), args=[job_id], client=pipe)
        decoded = [decode_reply(reply) for reply in pipe.execute()]
        return [None if d is None else d[0].job for d in decoded]

    def _finish(
        self, job_id: str, status: JobStatus, fields: dict[str, str],
        from_: tuple[JobStatus, ...], worker: str | None = None,
    ) -> JobRecord | None:
        event = self._move(job_id, _Move(from_, status, EventType.COMPLETED, fields,
                                         claimant=worker))
        return None if event is None else event.job

    def _move(self, job_id: str, move: _Move) -> JobEvent | None:
        """``move`` (TRANSITION) made on the job, applied."""
        return self._applied(self._transition(keys=self._transition_keys(job_id),
                                              args=move.args(job_id)))

    def _applied(self, reply: Any) -> JobEvent | None:
        """The event a script answered; runs the hook when the script published it."""
        decoded = decode_reply(reply)
        if decoded is None:
            return None
        event, published = decoded
        if published and self._on_event is not None:
            try:
                self._on_event(event.job, event.type)
            except Exception:
                # The change is stored and announced; a failing hook (webhook queue down)
                # must not make the caller believe otherwise and retry it.
                log.exception("event hook failed for %s %s", event.job.id, event.type.value)
        return event


# The job hash fields that say whether a run should stop (``_should_stop``).
_RUN_STATE_FIELDS = ["status", "cancel", "worker"]


def _should_stop(run_state: Sequence[str | None], worker: str | None) -> bool:
    """``is_cancel_requested`` from the job's ``_RUN_STATE_FIELDS``."""
    status, cancel, claimant = run_state
    if status is None or cancel == "1":
        return True
    return worker is not None and (status != JobStatus.RUNNING or claimant != worker)


def _batch_key(job: JobRecord) -> str:
    """The batch set the job is filed in while queued ('' = it always runs alone)."""
    signature = batch_signature(job.request)
    return keys.batch_key(job.request.model, signature) if signature else ""
