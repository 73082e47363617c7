"""Every Redis key and channel name of the job store, in one place.

Layout (everything a job owns expires with it):
  latentd:job:<id>            hash: ``doc`` (the immutable part: id, owner, request,
                              warnings, inputs, metadata), ``status``, ``created_at``,
                              ``updated_at``, ``started_at``, ``finished_at``, ``progress``,
                              ``images``, ``error``, ``metrics``, ``attempts``, ``cancel``,
                              ``queue`` (its queue-position set), ``clock`` (see wire.py),
                              ``worker`` (heartbeat name of the process that claimed it),
                              ``batch`` (its batch set; absent: the job runs alone)
  latentd:job:<id>:webhooks   list of WebhookAttempt JSON
  latentd:owner:<owner>       sorted set of job ids by creation time (listing)
  latentd:owner:<owner>:status:<status>
                              the same, of the owner's jobs in that status (filtered
                              listing); kept by every transition (wire.py ``reply``)
  latentd:queue:<model>       sorted set of queued job ids by (priority, age) (queue position)
  latentd:batch:<model>:<signature>
                              the same, of the queued jobs with that batch signature
                              (shared.batching): where a worker finds a job's companions
  latentd:idem:<owner>:<key>  "<job id> <request fingerprint>" for Idempotency-Key
  latentd:expiry              sorted set of job ids by expiry time (output clean-up)
  latentd:running             sorted set of running job ids by claim time (the reaper's)
  latentd:events:<id>         pub/sub channel of the job's events
"""

from __future__ import annotations

PREFIX = "latentd"
EXPIRY_KEY = f"{PREFIX}:expiry"
RUNNING_KEY = f"{PREFIX}:running"
# Scripts that find a job by an id they read (an Idempotency-Key's job) build its keys
# from these two, so the names still live only here.
JOB_KEY_PREFIX = f"{PREFIX}:job:"
WEBHOOKS_SUFFIX = ":webhooks"


def job_key(job_id: str) -> str:
    return JOB_KEY_PREFIX + job_id


def webhooks_key(job_id: str) -> str:
    return job_key(job_id) + WEBHOOKS_SUFFIX


def owner_key(owner: str) -> str:
    return OWNER_PREFIX + owner


# The status index's names are built inside Lua (a transition learns the owner from the
# job it moves), from this prefix: owner_status_key's format, written once for both.
OWNER_PREFIX = f"{PREFIX}:owner:"
STATUS_INFIX = ":status:"


def owner_status_key(owner: str, status: str) -> str:
    return OWNER_PREFIX + owner + STATUS_INFIX + status


def queue_key(model: str) -> str:
    return f"{PREFIX}:queue:{model}"


def batch_key(model: str, signature: str) -> str:
    return f"{PREFIX}:batch:{model}:{signature}"


def idempotency_key(owner: str, key: str) -> str:
    return f"{PREFIX}:idem:{owner}:{key}"


# Scripts that claim several jobs build their channels from this prefix.
CHANNEL_PREFIX = f"{PREFIX}:events:"


def channel(job_id: str) -> str:
    return CHANNEL_PREFIX + job_id
