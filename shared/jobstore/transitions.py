"""The Lua of every state change: which moves are allowed, and what each one writes.

Each script checks the job's current status, writes the change with its stamps (Redis's
clock, see wire.py) and ends with ``reply``, which reads the whole job back and publishes
it: one script, one atomic step, so two racing moves cannot both win.
"""

from __future__ import annotations

from shared.jobstore import idempotency
from shared.jobstore.wire import LUA_LIBRARY

# Queue scores order by queue level (shared.celery_app.queue_level: the priority band,
# then fair share within it), then age: level * LEVEL_WEIGHT + µs since 2025. Scores are
# doubles, exact up to 2**53 ~ 9.007e15: ten levels 8e14 µs (25 years) apart fit.
LEVEL_WEIGHT = 8 * 10**14
QUEUE_EPOCH_US = 1_735_689_600 * 10**6  # 2025-01-01T00:00:00Z


def queue_weight(level: int) -> int:
    """The part of a queue score that puts lower levels (served first) first."""
    return level * LEVEL_WEIGHT


def score_range(levels: range) -> tuple[int, int]:
    """The queue scores of jobs queued at ``levels`` (inclusive bounds)."""
    return queue_weight(levels[0]), queue_weight(levels[-1] + 1) - 1


# Create reply when the id is taken.
ID_IN_USE = -2

# Store a new queued job, unless its Idempotency-Key names a live one.
# KEYS: job, webhooks, owner index, queue set, idempotency key ('' = none), expiry index,
#       batch set ('' = the job runs alone).
# ARGV: job id, channel, doc, ttl, queue weight, key record, fingerprint, job key
#       prefix, webhooks suffix, queue epoch, the model's metric labels (encode_labels).
CREATE = LUA_LIBRARY + r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return {-2, ARGV[1]} end
""" + idempotency.CHECK + r"""
local now = stamp(KEYS[1])
local at = iso(now)
redis.call('HSET', KEYS[1], 'doc', ARGV[3], 'status', 'queued', 'created_at', at,
           'updated_at', at, 'attempts', '0', 'queue', KEYS[4], 'weight', ARGV[5],
           'labels', ARGV[11])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[3], string.format('%d', now), ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[4])
local age = now - tonumber(ARGV[10])
redis.call('ZADD', KEYS[4], string.format('%d', tonumber(ARGV[5]) + age), ARGV[1])
if KEYS[7] ~= '' then
  redis.call('HSET', KEYS[1], 'batch', KEYS[7])
  redis.call('ZADD', KEYS[7], string.format('%d', tonumber(ARGV[5]) + age), ARGV[1])
  redis.call('EXPIRE', KEYS[7], ARGV[4])
end
redis.call('ZADD', KEYS[6], string.format('%.6f', now / 1e6 + tonumber(ARGV[4])), ARGV[1])
return reply(KEYS, ARGV[1], ARGV[2], 'queued')
"""
# Move a job to a new status if its current one is allowed, and set fields. A move made
# for a worker names it (the claimant): it applies only while that worker's claim on the
# running job stands, so a worker whose job was re-queued or taken over cannot touch it.
# Keeps the running index: a claim files the job under its time, leaving running drops it.
# KEYS: job, webhooks, running index. ARGV: job id, channel, allowed statuses (space
#   separated), new status, event, max attempts (0 = this move does not count one), the
#   error to fail with once attempts ran out, claimant ('' = anyone), then field/value
#   pairs.
_TRANSITION_BODY = r"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not string.find(' ' .. ARGV[3] .. ' ', ' ' .. status .. ' ', 1, true) then
  return false
end
if ARGV[8] ~= '' and (status ~= 'running' or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[8])
then
  return false
end
local to, event = ARGV[4], ARGV[5]
if status == 'running' and event == 'started' then
  -- A second claim of a running job (a redelivered or re-published task) wins only once
  -- its claimant has stopped beating for it: a live run is never taken over.
  local claimant = redis.call('HGET', KEYS[1], 'worker') or ''
  if claimant ~= '' then
    local model = cjson.decode(redis.call('HGET', KEYS[1], 'doc')).request.model
    if beats_for(redis.call('GET', HEARTBEAT_PREFIX .. ':' .. model .. ':' .. claimant),
                 ARGV[1]) then
      return false
    end
  end
end
local fields = {}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
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
local us = stamp(KEYS[1])
local at = iso(us)
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
if status == 'queued' and to ~= 'queued' then leave_queue(KEYS[1], ARGV[1]) end
if to == 'running' then
  if event == 'started' then
    redis.call('ZADD', KEYS[3], string.format('%.6f', us / 1e6), ARGV[1])
  end
elseif status == 'running' then
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return reply(KEYS, ARGV[1], ARGV[2], event)
"""
TRANSITION = LUA_LIBRARY + _TRANSITION_BODY

# A claim (TRANSITION to running, ``started``) and, in the same step, what its run asks
# next: how many queued jobs are left in the job's batch set (0: it runs alone, no
# companions to look for) and the job's status, cancel flag and claimant, which say
# whether the run should stop already. One script rather than a pipeline of three: a
# pipeline of scripts costs redis-py a SCRIPT EXISTS round trip first.
# KEYS, ARGV: TRANSITION's. Answers {TRANSITION's answer, waiting, {status, cancel, worker}}.
CLAIM = LUA_LIBRARY + "local function transition()\n" + _TRANSITION_BODY + r"""end
local moved = transition()
local batch = redis.call('HGET', KEYS[1], 'batch')
local waiting = batch and redis.call('ZCARD', batch) or 0
return {moved, waiting, redis.call('HMGET', KEYS[1], 'status', 'cancel', 'worker')}
"""

# Take back a running job whose worker stopped, if it has: only one of several reapers
# racing on a job wins, since the check and the move are this one script. Stalled means
#   - running longer than the hard time limit plus a grace: its worker, alive or not, did
#     not stop it (a hung process Celery could not kill) -> failed, timeout;
#   - or its claiming worker no longer beats for it: the heartbeat key expired (crashed,
#     stopped, cut off from Redis), or, once the claim is older than a heartbeat's
#     lifetime, the key names another job or none (the task ended without finishing the
#     job) -> failed, timeout past the hard limit (Celery killed it for that); failed,
#     worker_lost when no attempt is left; else re-queued for the caller to publish again.
# A job whose owner asked to cancel it is canceled instead. A job no longer running
# leaves the index. Answers false when nothing changed.
# KEYS: job, webhooks, running index. ARGV: job id, channel, now in epoch seconds ('' =
#   Redis's clock), hard time limit, grace, heartbeat lifetime (all seconds), heartbeat
#   key prefix, max attempts, timeout error, worker-lost error, cancel error, progress of a
#   job not started, queue epoch (µs). A re-queued job keeps the queue weight it was
#   created with (hash field ``weight``), so it goes back where it stood.
RECLAIM = LUA_LIBRARY + r"""
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return false
end
local claimed = tonumber(redis.call('ZSCORE', KEYS[3], ARGV[1]))
if not claimed then return false end
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local elapsed = now - claimed
local hard = tonumber(ARGV[4])
local request = cjson.decode(redis.call('HGET', KEYS[1], 'doc')).request
local verdict = nil
if elapsed > hard + tonumber(ARGV[5]) then
  verdict = 'timeout'
else
  local worker = redis.call('HGET', KEYS[1], 'worker') or ''
  if worker ~= '' then
    -- The key shared.heartbeat.heartbeat_key names; its value is the job(s) being run.
    local beat = redis.call('GET', ARGV[7] .. ':' .. request.model .. ':' .. worker)
    if not beats_for(beat, ARGV[1]) and (not beat or elapsed >= tonumber(ARGV[6])) then
      verdict = elapsed >= hard and 'timeout' or 'lost'
    end
  end
end
if not verdict then return false end
redis.call('ZREM', KEYS[3], ARGV[1])
local us = stamp(KEYS[1])
local at = iso(us)
local to, err = nil, nil
if redis.call('HGET', KEYS[1], 'cancel') == '1' then
  to, err = 'canceled', ARGV[11]
elseif verdict == 'timeout' then
  to, err = 'failed', ARGV[9]
elseif tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') >= tonumber(ARGV[8]) then
  to, err = 'failed', ARGV[10]
end
if to then
  redis.call('HSET', KEYS[1], 'status', to, 'error', err, 'updated_at', at, 'finished_at', at)
  return reply(KEYS, ARGV[1], ARGV[2], 'completed')
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'progress', ARGV[12], 'updated_at', at)
redis.call('HDEL', KEYS[1], 'worker')
local weight = tonumber(redis.call('HGET', KEYS[1], 'weight') or '0')
local score = string.format('%d', weight + us - tonumber(ARGV[13]))
redis.call('ZADD', redis.call('HGET', KEYS[1], 'queue'), score, ARGV[1])
local batch = redis.call('HGET', KEYS[1], 'batch')
if batch then redis.call('ZADD', batch, score, ARGV[1]) end
return reply(KEYS, ARGV[1], ARGV[2], 'queued')
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
  leave_queue(KEYS[1], ARGV[1])
  return reply(KEYS, ARGV[1], ARGV[2], 'completed')
end
if status == 'running' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return reply(KEYS, ARGV[1], ARGV[2], nil)
"""

# Claim a running job's companions: queued jobs of its batch set (same signature, so one
# pipeline call runs them all), best queue score first, within a score range (the
# caller's priority band: a low-priority job never rides ahead of normal ones), while
# their images fit. Each is moved exactly as a claim by TRANSITION moves it (running
# under ``worker``, an attempt counted, filed in the running index, a ``started`` event),
# so from here on it is one of the worker's claimed jobs like any other: the reaper takes
# it back on its own when the worker stops beating for it, and its own task, delivered
# later, finds it running under a live claim (or finished) and runs nothing. A job out
# of attempts is left queued for its own task to fail; an entry whose job is no longer
# queued (expired) is dropped.
# KEYS: batch set, running index. ARGV: worker, lowest score, highest score, images
#   that still fit, max attempts, progress of a job not started, job key prefix, webhooks
#   suffix, channel prefix, candidates to look at.
CLAIM_COMPANIONS = LUA_LIBRARY + r"""
local room = tonumber(ARGV[4])
local claimed = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], ARGV[3], 'LIMIT', 0,
                       tonumber(ARGV[10]))
for _, id in ipairs(ids) do
  if room <= 0 then break end
  local job_key = ARGV[7] .. id
  local status, attempts, doc = unpack(redis.call('HMGET', job_key, 'status', 'attempts',
                                                  'doc'))
  if status ~= 'queued' then
    redis.call('ZREM', KEYS[1], id)
  else
    attempts = tonumber(attempts or '0')
    local images = cjson.decode(doc).request.num_images
    if attempts < tonumber(ARGV[5]) and images <= room then
      room = room - images
      local us = stamp(job_key)
      local at = iso(us)
      leave_queue(job_key, id)
      redis.call('HSET', job_key, 'status', 'running', 'worker', ARGV[1], 'progress', ARGV[6],
                 'attempts', tostring(attempts + 1), 'updated_at', at, 'started_at', at)
      redis.call('ZADD', KEYS[2], string.format('%.6f', us / 1e6), id)
      claimed[#claimed + 1] = reply({job_key, job_key .. ARGV[8]}, id, ARGV[9] .. id,
                                    'started')
    end
  end
end
return claimed
"""
