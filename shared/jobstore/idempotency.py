"""Idempotency-Key: the first job made with a key is the answer for as long as it lives.

The key's record is ``"<job id> <request fingerprint>"``, kept per owner and expiring with
the job. The check and the create are one Lua script (``store.CREATE`` starts with
``CHECK``), so two requests racing with one key cannot both create a job.
"""

from __future__ import annotations

# Create-script reply when the key names a live job made from another request body.
CONFLICT = -1

# KEYS[5]: the idempotency key ('' = none). ARGV[4]: ttl, ARGV[6]: the record to store,
# ARGV[7]: this request's fingerprint, ARGV[8]/ARGV[9]: job key prefix/webhooks suffix.
# Replays the earlier job (nothing published), refuses another body, else claims the key.
CHECK = r"""
if KEYS[5] ~= '' then
  local seen = redis.call('GET', KEYS[5])
  if seen then
    local space = string.find(seen, ' ', 1, true)
    local seen_id = string.sub(seen, 1, space - 1)
    local seen_key = ARGV[8] .. seen_id
    if redis.call('EXISTS', seen_key) == 1 then
      if string.sub(seen, space + 1) ~= ARGV[7] then return {-1, seen_id} end
      return reply({seen_key, seen_key .. ARGV[9]}, seen_id, nil, nil)
    end
  end
  redis.call('SET', KEYS[5], ARGV[6], 'EX', ARGV[4])
end
"""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used with a different request body."""

    def __init__(self, job_id: str):
        super().__init__(f"Idempotency-Key already used for job {job_id} with another body")
        self.job_id = job_id


def key_record(job_id: str, fingerprint: str | None) -> str:
    """What the key stores: the job it made and the fingerprint of the body that made it."""
    return f"{job_id} {fingerprint or ''}"
