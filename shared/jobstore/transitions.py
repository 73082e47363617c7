"""The Lua of every state change: which moves are allowed, and what each one writes.

Each script checks the job's current status, writes the change with its stamps (Redis's
clock, see wire.py) and ends with ``reply``, which reads the whole job back and publishes
it: one script, one atomic step, so two racing moves cannot both win.
"""

from __future__ import annotations

from shared.jobstore import idempotency
from shared.jobstore.wire import LUA_LIBRARY
from shared.schemas import Priority

# Queue scores order by priority, then age: weight + µs since 2025. Scores are doubles,
# exact up to 2**53 ~ 9.007e15, which fits three priorities 3e15 µs (95 years) apart.
# ``Priority`` is declared low to high; high goes first.
_QUEUE_RANK = {priority: rank for rank, priority in enumerate(reversed(Priority))}
assert len(_QUEUE_RANK) <= 3
QUEUE_EPOCH_US = 1_735_689_600 * 10**6  # 2025-01-01T00:00:00Z


def queue_weight(priority: Priority) -> int:
    """The part of a queue score that puts higher priorities first."""
    return _QUEUE_RANK[priority] * 3 * 10**15


# Create reply when the id is taken.
ID_IN_USE = -2

# Store a new queued job, unless its Idempotency-Key names a live one.
# KEYS: job, webhooks, owner index, queue set, idempotency key ('' = none), expiry index.
# ARGV: job id, channel, doc, ttl, queue weight, key record, fingerprint, job key
#       prefix, webhooks suffix, queue epoch.
CREATE = LUA_LIBRARY + r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return {-2, ARGV[1]} end
""" + idempotency.CHECK + r"""
local now = stamp(KEYS[1])
local at = iso(now)
redis.call('HSET', KEYS[1], 'doc', ARGV[3], 'status', 'queued', 'created_at', at,
           'updated_at', at, 'attempts', '0', 'queue', KEYS[4])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[3], string.format('%d', now), ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[4])
local age = now - tonumber(ARGV[10])
redis.call('ZADD', KEYS[4], string.format('%d', tonumber(ARGV[5]) + age), ARGV[1])
redis.call('ZADD', KEYS[6], string.format('%.6f', now / 1e6 + tonumber(ARGV[4])), ARGV[1])
return reply(KEYS, ARGV[1], ARGV[2], 'queued')
"""
# Move a job to a new status if its current one is allowed, and set fields.
# KEYS: job, webhooks. ARGV: job id, channel, allowed statuses (space separated), new
#   status, event, max attempts (0 = this move does not count one), the error to fail
#   with once attempts ran out, then field/value pairs.
TRANSITION = LUA_LIBRARY + r"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not string.find(' ' .. ARGV[3] .. ' ', ' ' .. status .. ' ', 1, true) then
  return false
end
local to, event = ARGV[4], ARGV[5]
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
local max_attempts = tonumber(ARGV[6])
if max_attempts > 0 then
  local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
  if attempts >= max_attempts then
    -- Started that often and never finished: its workers died; stop retrying it.
    to, event, fields = 'failed', 'completed', {'error', ARGV[7]}
  else
    fields[#fields + 1] = 'attempts'
    fields[#fields + 1] = tostring(attempts + 1)
  end
end
local at = iso(stamp(KEYS[1]))
fields[#fields + 1] = 'status'
fields[#fields + 1] = to
fields[#fields + 1] = 'updated_at'
fields[#fields + 1] = at
if event == 'started' then
  fields[#fields + 1] = 'started_at'
  fields[#fields + 1] = at
elseif event == 'completed' then
  fields[#fields + 1] = 'finished_at'
  fields[#fields + 1] = at
end
redis.call('HSET', KEYS[1], unpack(fields))
if status == 'queued' and to ~= 'queued' then
  redis.call('ZREM', redis.call('HGET', KEYS[1], 'queue'), ARGV[1])
end
return reply(KEYS, ARGV[1], ARGV[2], event)
"""

# Queued: canceled now. Running: flag it for the worker, which polls it every step.
# Terminal: leave it be. Answers the job as it now stands.
# KEYS: job, webhooks. ARGV: job id, channel, the cancel error JSON.
REQUEST_CANCEL = LUA_LIBRARY + r"""
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  local at = iso(stamp(KEYS[1]))
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'error', ARGV[3], 'updated_at', at,
             'finished_at', at)
  redis.call('ZREM', redis.call('HGET', KEYS[1], 'queue'), ARGV[1])
  return reply(KEYS, ARGV[1], ARGV[2], 'completed')
end
if status == 'running' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return reply(KEYS, ARGV[1], ARGV[2], nil)
"""
