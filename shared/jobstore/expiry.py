"""The expiry index: which jobs have outlived their TTL, so their outputs can be removed.

Redis expires a job's keys by itself; the images in storage are not Redis keys, so the
create script also files every job here under its expiry time, and a sweeper pops them.
"""

from __future__ import annotations

import redis

from shared.jobstore.keys import EXPIRY_KEY

# Pop in one script so that two sweepers (one per API process) never get the same id.
# KEYS: expiry index. ARGV: now in epoch seconds ('' = Redis's clock), most ids to pop.
_POP = r"""
local now = ARGV[1]
if now == '' then
  local t = redis.call('TIME')
  now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[2])
if #ids > 0 then redis.call('ZREM', KEYS[1], unpack(ids)) end
return ids
"""


class ExpiryIndex:
    """Job ids by the time they expire (filed by ``JobStore.create``)."""

    def __init__(self, client: redis.Redis):
        self._pop = client.register_script(_POP)

    def pop_expired(self, now: float | None = None, limit: int = 100) -> list[str]:
        """Ids of jobs past their TTL (at ``now``, default Redis's clock), removed from
        the index: the caller deletes their outputs."""
        return self._pop(keys=[EXPIRY_KEY], args=["" if now is None else repr(now), limit])
