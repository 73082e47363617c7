"""Jobs in Redis. Every status change goes through this module, atomically, in one place.

Layout (all keys expire with the job):
  latentd:job:<id>            hash: ``doc`` (immutable part of the job), ``status``,
                              timestamps, ``progress``, ``images``, ``error``, ``metrics``,
                              ``attempts``, ``cancel``, ``queue`` (its queue-position set)
  latentd:job:<id>:webhooks   list of WebhookAttempt JSON
  latentd:owner:<owner>       sorted set of job ids by creation time (listing)
  latentd:queue:<model>       sorted set of queued job ids by (priority, time) (queue position)
  latentd:idem:<owner>:<key>  "<job id> <request fingerprint>" for Idempotency-Key
  latentd:expiry              sorted set of job ids by expiry time (output clean-up)
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

import redis

from shared.celery_app import PRIORITY_LEVELS
from shared.schemas import (
    EventType,
    ImageInfo,
    Job,
    JobError,
    JobEvent,
    JobPage,
    JobStatus,
    Metrics,
    Progress,
    WebhookAttempt,
)
from shared.settings import Settings

EventHook = Callable[[Job, EventType], None]

_PREFIX = "latentd"
_EXPIRY_KEY = f"{_PREFIX}:expiry"
# Scores order the queue by priority first, then age: ms since epoch stay below 1e13.
_PRIORITY_WEIGHT = 10**13

# Create a job unless its idempotency key already names a live one.
# KEYS: job, owner index, queue set, idempotency key (or "" ), expiry set
# ARGV: doc, status, created_at, created_ms, queue score, ttl, idem value, channel,
#       event, job id, expires_at
_CREATE = """
if KEYS[4] ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local seen_id = string.match(seen, '^(%S+)')
    if redis.call('EXISTS', 'latentd:job:' .. seen_id) == 1 then return seen end
  end
  redis.call('SET', KEYS[4], ARGV[7], 'EX', ARGV[6])
end
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'status', ARGV[2], 'created_at', ARGV[3],
           'updated_at', ARGV[3], 'attempts', 0, 'queue', KEYS[3])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[10])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[10])
redis.call('ZADD', KEYS[5], ARGV[11], ARGV[10])
redis.call('PUBLISH', ARGV[8], ARGV[9])
return false
"""

# Move a job between states if its current status is one of the allowed ones.
# KEYS: job. ARGV: allowed statuses (space separated), new status, channel, event,
#       max attempts (0 = do not count an attempt), then field/value pairs to set.
# Returns the new status, 'exhausted' when attempts ran out, or false.
_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
local allowed = false
for s in string.gmatch(ARGV[1], '%S+') do
  if s == status then allowed = true end
end
if not allowed then return false end
if tonumber(ARGV[5]) > 0 then
  local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  if attempts > tonumber(ARGV[5]) then return 'exhausted' end
end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if status == 'queued' and ARGV[2] ~= 'queued' then
  local queue = redis.call('HGET', KEYS[1], 'queue')
  if queue then redis.call('ZREM', queue, string.match(KEYS[1], '[^:]+$')) end
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return ARGV[2]
"""

# Record progress only while running, so a late step cannot touch a finished job.
_PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'updated_at', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# Running jobs get a flag the worker polls each step; queued jobs are handled by
# the caller with a transition. Returns the status seen.
_REQUEST_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'running' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return status
"""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used with a different request body."""

    def __init__(self, job_id: str):
        super().__init__(f"Idempotency-Key already used for job {job_id} with another body")
        self.job_id = job_id


def _now() -> datetime:
    return datetime.now(UTC)


def _job_key(job_id: str) -> str:
    return f"{_PREFIX}:job:{job_id}"


def _webhooks_key(job_id: str) -> str:
    return f"{_PREFIX}:job:{job_id}:webhooks"


def _owner_key(owner: str) -> str:
    return f"{_PREFIX}:owner:{owner}"


def _queue_key(model: str) -> str:
    return f"{_PREFIX}:queue:{model}"


class JobStore:
    """Create, read and move jobs through ``queued → running → terminal``."""

    def __init__(self, client: redis.Redis, settings: Settings, on_event: EventHook | None = None):
        self._redis = client
        self._ttl = settings.job_ttl_seconds
        self._max_attempts = settings.task_max_attempts
        self._on_event = on_event
        self._create = client.register_script(_CREATE)
        self._transition = client.register_script(_TRANSITION)
        self._progress = client.register_script(_PROGRESS)
        self._request_cancel = client.register_script(_REQUEST_CANCEL)

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        # Imported here: webhooks import this module's neighbours, not the other way round.
        from shared.celery_app import make_celery
        from shared.webhooks import WebhookPublisher

        client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        publisher = WebhookPublisher(client, app=make_celery(settings))
        return cls(client, settings, on_event=publisher)

    @staticmethod
    def new_job_id() -> str:
        return "job_" + secrets.token_hex(12)

    @staticmethod
    def channel(job_id: str) -> str:
        return f"{_PREFIX}:events:{job_id}"

    # -- creation and reads -------------------------------------------------------

    def create(
        self, job: Job, *, idempotency_key: str | None = None, fingerprint: str | None = None
    ) -> tuple[Job, bool]:
        """Store a new queued job; with an idempotency key, return the earlier job instead."""
        if job.status is not JobStatus.QUEUED:
            raise ValueError("new jobs start queued")
        created_ms = int(job.created_at.timestamp() * 1000)
        priority = PRIORITY_LEVELS[job.request.priority]
        idem_key = f"{_PREFIX}:idem:{job.owner}:{idempotency_key}" if idempotency_key else ""
        doc = job.model_dump_json(
            include={"id", "owner", "created_at", "request", "metadata"}
        )
        event = self._event_json(job.id, EventType.QUEUED, JobStatus.QUEUED, None, job.created_at)
        seen = self._create(
            keys=[_job_key(job.id), _owner_key(job.owner), _queue_key(job.request.model),
                  idem_key, _EXPIRY_KEY],
            args=[doc, JobStatus.QUEUED.value, job.created_at.isoformat(), created_ms,
                  priority * _PRIORITY_WEIGHT + created_ms, self._ttl,
                  f"{job.id} {fingerprint or ''}", self.channel(job.id), event, job.id,
                  created_ms / 1000 + self._ttl],
        )
        if seen:
            seen_id, _, seen_fingerprint = seen.partition(" ")
            if seen_fingerprint != (fingerprint or ""):
                raise IdempotencyConflict(seen_id)
            existing = self.get(seen_id)
            if existing is not None:
                return existing, False
        stored = self.get(job.id)
        assert stored is not None
        self._emit(stored, EventType.QUEUED)
        return stored, True

    def get(self, job_id: str) -> Job | None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(_job_key(job_id))
        pipe.lrange(_webhooks_key(job_id), 0, -1)
        fields, attempts = pipe.execute()
        if not fields or "doc" not in fields:
            return None
        job = Job.model_validate(
            {
                **json.loads(fields["doc"]),
                "status": fields["status"],
                "updated_at": fields["updated_at"],
                "started_at": fields.get("started_at") or None,
                "finished_at": fields.get("finished_at") or None,
                "attempts": int(fields.get("attempts", 0)),
                "progress": json.loads(fields.get("progress", "{}")),
                "images": json.loads(fields.get("images", "[]")),
                "error": json.loads(fields["error"]) if "error" in fields else None,
                "metrics": json.loads(fields.get("metrics", "{}")),
                "webhook_attempts": [json.loads(a) for a in attempts],
            }
        )
        if job.status is JobStatus.QUEUED:
            job.queue_position = self._redis.zrank(fields["queue"], job_id)
        return job

    def list(
        self,
        owner: str,
        *,
        status: JobStatus | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> JobPage:
        """The owner's jobs, newest first. The cursor is the last id of the previous page."""
        index = _owner_key(owner)
        start = 0
        if cursor:
            rank = self._redis.zrevrank(index, cursor)
            if rank is None:
                raise ValueError("cursor does not name one of your jobs")
            start = rank + 1
        jobs: list[Job] = []
        batch = max(limit, 50)
        while len(jobs) < limit:
            ids = self._redis.zrevrange(index, start, start + batch - 1)
            if not ids:
                break
            for job_id in ids:
                start += 1
                job = self.get(job_id)
                if job is None:  # expired: drop it from the index as we pass
                    self._redis.zrem(index, job_id)
                    start -= 1
                    continue
                if status is None or job.status is status:
                    jobs.append(job)
                    if len(jobs) == limit:
                        break
        more = len(jobs) == limit and self._redis.zcard(index) > start
        return JobPage(jobs=jobs, next_cursor=jobs[-1].id if more else None)

    # -- transitions --------------------------------------------------------------

    def mark_running(self, job_id: str) -> Job | None:
        """Claim a job for a worker; ``None`` means the task must not run it."""
        now = _now()
        result = self._move(
            job_id, {JobStatus.QUEUED, JobStatus.RUNNING}, JobStatus.RUNNING, EventType.STARTED,
            {"started_at": now.isoformat()}, now, count_attempt=True,
        )
        if result == "exhausted":
            self.mark_failed(
                job_id, "attempts_exhausted",
                f"the job was started {self._max_attempts} times and no worker finished it",
            )
            return None
        return self._emit_transition(job_id, result, EventType.STARTED)

    def update_progress(
        self, job_id: str, step: int, total_steps: int, eta_seconds: float | None
    ) -> None:
        now = _now()
        progress = Progress(step=step, total_steps=total_steps, eta_seconds=eta_seconds)
        event = self._event_json(job_id, EventType.PROGRESS, JobStatus.RUNNING, progress, now)
        applied = self._progress(
            keys=[_job_key(job_id)],
            args=[progress.model_dump_json(), now.isoformat(), self.channel(job_id), event],
        )
        if applied and self._on_event is not None:
            job = self.get(job_id)
            if job is not None:
                self._on_event(job, EventType.PROGRESS)

    def mark_succeeded(self, job_id: str, images: list[ImageInfo], metrics: Metrics) -> Job | None:
        fields = {
            "images": json.dumps([i.model_dump(mode="json") for i in images]),
            "metrics": metrics.model_dump_json(),
        }
        return self._finish(job_id, JobStatus.SUCCEEDED, fields, from_={JobStatus.RUNNING})

    def mark_failed(self, job_id: str, code: str, message: str) -> Job | None:
        error = JobError(code=code, message=message).model_dump_json()
        return self._finish(
            job_id, JobStatus.FAILED, {"error": error}, from_={JobStatus.QUEUED, JobStatus.RUNNING}
        )

    def mark_canceled(self, job_id: str) -> Job | None:
        error = JobError(code="canceled", message="the job was canceled").model_dump_json()
        return self._finish(
            job_id, JobStatus.CANCELED, {"error": error}, from_={JobStatus.QUEUED, JobStatus.RUNNING}
        )

    def request_cancel(self, job_id: str) -> Job | None:
        """Cancel now if queued; ask the worker to stop if running; leave terminal jobs be."""
        status = self._request_cancel(keys=[_job_key(job_id)])
        # A worker may claim a queued job between the two calls; then the flag applies.
        if status == JobStatus.QUEUED.value and self.mark_canceled(job_id) is None:
            self._request_cancel(keys=[_job_key(job_id)])
        return self.get(job_id)

    def is_cancel_requested(self, job_id: str) -> bool:
        return self._redis.hget(_job_key(job_id), "cancel") == "1"

    def delete(self, job_id: str) -> bool:
        fields = self._redis.hmget(_job_key(job_id), ["doc", "queue"])
        if fields[0] is None:
            return False
        owner = json.loads(fields[0])["owner"]
        pipe = self._redis.pipeline()
        pipe.delete(_job_key(job_id), _webhooks_key(job_id))
        pipe.zrem(_owner_key(owner), job_id)
        if fields[1]:
            pipe.zrem(fields[1], job_id)
        pipe.zrem(_EXPIRY_KEY, job_id)
        pipe.execute()
        return True

    def record_webhook_attempt(self, job_id: str, attempt: WebhookAttempt) -> None:
        key = _webhooks_key(job_id)
        pipe = self._redis.pipeline()
        pipe.rpush(key, attempt.model_dump_json())
        pipe.expire(key, self._ttl)
        pipe.execute()

    def pop_expired(self, now: float | None = None, limit: int = 100) -> list[str]:
        """Ids of jobs past their TTL, removed from the expiry index (outputs to delete)."""
        now = _now().timestamp() if now is None else now
        ids = self._redis.zrangebyscore(_EXPIRY_KEY, "-inf", now, start=0, num=limit)
        if ids:
            self._redis.zrem(_EXPIRY_KEY, *ids)
        return ids

    def ping(self) -> bool:
        return bool(self._redis.ping())

    # -- internals ----------------------------------------------------------------

    def _finish(
        self, job_id: str, status: JobStatus, fields: dict[str, str], from_: set[JobStatus]
    ) -> Job | None:
        now = _now()
        result = self._move(
            job_id, from_, status, EventType.COMPLETED, {"finished_at": now.isoformat(), **fields}, now
        )
        return self._emit_transition(job_id, result, EventType.COMPLETED)

    def _move(
        self,
        job_id: str,
        from_: set[JobStatus],
        to: JobStatus,
        event_type: EventType,
        fields: dict[str, str],
        now: datetime,
        count_attempt: bool = False,
    ) -> str | None:
        event = self._event_json(job_id, event_type, to, None, now)
        pairs: list[str] = []
        for name, value in {"updated_at": now.isoformat(), **fields}.items():
            pairs += [name, value]
        return self._transition(
            keys=[_job_key(job_id)],
            args=[" ".join(s.value for s in from_), to.value, self.channel(job_id), event,
                  self._max_attempts if count_attempt else 0, *pairs],
        )

    def _emit_transition(self, job_id: str, result: str | None, event: EventType) -> Job | None:
        if not result or result == "exhausted":
            return None
        job = self.get(job_id)
        if job is not None:
            self._emit(job, event)
        return job

    def _emit(self, job: Job, event: EventType) -> None:
        if self._on_event is not None:
            self._on_event(job, event)

    def _event_json(
        self,
        job_id: str,
        event_type: EventType,
        status: JobStatus,
        progress: Progress | None,
        at: datetime,
    ) -> str:
        return JobEvent(
            type=event_type, job_id=job_id, status=status, progress=progress, at=at
        ).model_dump_json()
