"""The one shape a job leaves Redis in, written by Lua and read by one Python decoder.

Every script that touches a job ends with ``reply``: it reads the whole job back (hash
fields, webhook attempts, queue position) in the same script, as ``JobRecord`` JSON, and
answers ``{published, '{"type": <event>, "job": <record>}'}``. A transition publishes
that very message on the job's channel, so the script's reply and a subscriber's message
are the same text, decoded the same way (``decode_event``). Nobody re-reads after a write.
"""

from __future__ import annotations

from typing import Any

from shared.heartbeat import HEARTBEAT_PREFIX
from shared.jobstore.keys import OWNER_PREFIX, STATUS_INFIX
from shared.metrics import COUNT_JOB_EVENT_LUA
from shared.records import JobEvent, JobRecord
from shared.schemas import JobStatus

# The immutable part of a record, kept as one JSON ``doc`` field of the job hash.
DOC_FIELDS = frozenset({"id", "owner", "request", "warnings", "inputs", "metadata",
                        "queue_level"})

# Lua helpers every job script starts with (scripts are this text plus their own body).
LUA_LIBRARY = COUNT_JOB_EVENT_LUA + f"""
local HEARTBEAT_PREFIX = '{HEARTBEAT_PREFIX}'
local OWNER_PREFIX = '{OWNER_PREFIX}'
local STATUS_INFIX = '{STATUS_INFIX}'
local STATUSES = {{{", ".join(repr(s.value) for s in JobStatus)}}}
""" + r"""
-- Microseconds since the epoch on Redis's clock, strictly after the job's previous
-- stamp: all hosts share one clock, and every write of a job has a later updated_at
-- than the one before, so subscribers can tell an old event from a new one by it.
local function stamp(job_key)
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('HGET', job_key, 'clock') or '0')
  if us <= last then us = last + 1 end
  redis.call('HSET', job_key, 'clock', string.format('%d', us))
  return us
end

-- A stamp as ISO 8601 UTC text (civil-from-days, H. Hinnant; Redis's Lua has no os.date).
local function iso(us)
  local secs = math.floor(us / 1000000)
  local days = math.floor(secs / 86400)
  local rem = secs - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor(
    (doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ', year, month, day,
    math.floor(rem / 3600), math.floor(rem % 3600 / 60), rem % 60, us - secs * 1000000)
end

-- Does a worker's heartbeat value (the ids of the jobs it runs, space separated; a batch
-- names several) name ``job_id``?
local function beats_for(beat, job_id)
  return beat and string.find(' ' .. beat .. ' ', ' ' .. job_id .. ' ', 1, true) ~= nil
end

-- A queued job leaves its queue set and its batch set (it started, ended or was deleted).
local function leave_queue(job_key, job_id)
  redis.call('ZREM', redis.call('HGET', job_key, 'queue'), job_id)
  local batch = redis.call('HGET', job_key, 'batch')
  if batch then redis.call('ZREM', batch, job_id) end
end

-- The whole job as JobRecord JSON, and its hash fields; nil when there is no such job.
-- Structured fields are stored as JSON written by pydantic and spliced in as they are:
-- a cjson round trip would turn an empty list into {} and round floats to 14 digits.
local function job_json(job_key, webhooks_key, job_id)
  local flat = redis.call('HGETALL', job_key)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  if not f.doc then return nil end
  local position = cjson.null
  if f.status == 'queued' and f.queue then
    position = redis.call('ZRANK', f.queue, job_id) or cjson.null
  end
  local scalars = cjson.encode({
    status = f.status, created_at = f.created_at, updated_at = f.updated_at,
    started_at = f.started_at or cjson.null, finished_at = f.finished_at or cjson.null,
    attempts = tonumber(f.attempts or '0'), queue_position = position,
  })
  local attempts = redis.call('LRANGE', webhooks_key, 0, -1)
  return string.sub(f.doc, 1, -2) .. ',' .. string.sub(scalars, 2, -2)
    .. ',"progress":' .. (f.progress or '{}') .. ',"images":' .. (f.images or '[]')
    .. ',"error":' .. (f.error or 'null') .. ',"metrics":' .. (f.metrics or '{}')
    .. ',"webhook_attempts":[' .. table.concat(attempts, ',') .. ']}', f
end

-- The event that announces a job already in a status (what a read reports).
local STATUS_EVENT = {queued = 'queued', running = 'started'}

-- File the job under its status in its owner's status index (and under no other), with
-- the owner index's score (creation time) and lifetime.
local function index_status(job_key, job_id, status)
  local owner = cjson.decode(redis.call('HGET', job_key, 'doc')).owner
  local owner_key = OWNER_PREFIX .. owner
  local created = redis.call('ZSCORE', owner_key, job_id)
  local ttl = redis.call('TTL', owner_key)
  for _, other in ipairs(STATUSES) do
    local key = owner_key .. STATUS_INFIX .. other
    if other == status and created then
      redis.call('ZADD', key, created, job_id)
      if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    else
      redis.call('ZREM', key, job_id)
    end
  end
end

-- End of every job script: {1, message} after publishing ``event`` with the job as
-- written, or {0, message} (nothing published) when ``event`` is nil; false if no job.
-- A script that publishes a change of status also files the job's new status, and
-- counts the change in the service's metrics (shared/metrics.py).
local function reply(keys, job_id, channel, event)
  local job, f = job_json(keys[1], keys[2], job_id)
  if not job then return false end
  if event and event ~= 'progress' then index_status(keys[1], job_id, f.status) end
  local published = event and 1 or 0
  if published == 1 then count_job_event(f, event) end
  event = event or STATUS_EVENT[f.status] or 'completed'
  local message = '{"type":"' .. event .. '","job":' .. job .. '}'
  if published == 1 then redis.call('PUBLISH', channel, message) end
  return {published, message}
end
"""

# Read a job. KEYS: job, webhooks. ARGV: job id.
READ = LUA_LIBRARY + "return reply(KEYS, ARGV[1], nil, nil)\n"

# Read several jobs at once (reader.py coalesces concurrent reads into one call).
# KEYS: job, webhooks of each job in ARGV's order. ARGV: job ids. Answers each job's
# ``reply`` message (READ's second element), or false for a missing job.
READ_MANY = LUA_LIBRARY + r"""
local messages = {}
for i, job_id in ipairs(ARGV) do
  local answer = reply({KEYS[2 * i - 1], KEYS[2 * i]}, job_id, nil, nil)
  messages[i] = answer and answer[2] or false
end
return messages
"""


def encode_doc(record: JobRecord) -> str:
    return record.model_dump_json(include=set(DOC_FIELDS))


def decode_event(data: str | bytes) -> JobEvent:
    """A message from a job's channel (or a script's reply) as a ``JobEvent``."""
    return JobEvent.model_validate_json(data)


def decode_reply(reply: Any) -> tuple[JobEvent, bool] | None:
    """A job script's answer: the event it describes and whether it was published."""
    if not reply:
        return None
    published, message = reply
    return decode_event(message), bool(published)
