"""Each webhook delivery attempt, appended to its job (the next record read carries it)."""

from __future__ import annotations

import redis

from shared.jobstore.keys import job_key, webhooks_key
from shared.schemas import WebhookAttempt

# Append only while the job lives, and expire the list with the job, not after it: at the
# job's own expiry instant (a relative PEXPIRE of the job's PTTL could land a millisecond
# later). KEYS: job, webhooks. ARGV: attempt JSON.
_RECORD = r"""
local expires_at = redis.call('PEXPIRETIME', KEYS[1])
if expires_at == -2 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
if expires_at > 0 then redis.call('PEXPIREAT', KEYS[2], expires_at) end
return 1
"""


class WebhookLog:
    """The delivery attempts of a job's webhooks, oldest first."""

    def __init__(self, client: redis.Redis):
        self._record = client.register_script(_RECORD)

    def record_webhook_attempt(self, job_id: str, attempt: WebhookAttempt) -> bool:
        """Append ``attempt`` to the job; False when the job no longer exists."""
        return bool(
            self._record(keys=[job_key(job_id), webhooks_key(job_id)],
                         args=[attempt.model_dump_json()])
        )
