"""An owner's jobs, newest first, by status, a page at a time.

Unfiltered listings walk the owner index; a status filter walks that status's index
(kept by the transitions), so it reads only matching jobs however many others the
owner has. The indexes outlive single jobs (each create extends them), so ids of jobs
that have expired are still in them; a listing drops those as it passes them. A job may
change status between reading its index entry and its record: the record decides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import redis

from shared.jobstore.keys import owner_key, owner_status_key
from shared.records import JobRecord
from shared.schemas import JobStatus

# How many ids to read per round trip: a status filter may skip most of them.
_MIN_BATCH = 50

# Up to ARGV[2] ids of the index KEYS[2] created before the job ARGV[1] ('' = from the
# newest), newest first; nil when the cursor is not in the owner index KEYS[1]. By
# creation time (the owner index's score), so a cursor whose job has since changed
# status still says where the page ends. One script: nothing moves in between.
_IDS_AFTER = r"""
local newest = '+inf'
if ARGV[1] ~= '' then
  local created = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not created then return false end
  newest = '(' .. created
end
return redis.call('ZREVRANGEBYSCORE', KEYS[2], newest, '-inf', 'LIMIT', 0, tonumber(ARGV[2]))
"""

ReadMany = Callable[[Sequence[str]], list[JobRecord | None]]


class JobListing:
    """Cursor pagination over the owner index; ``read_many`` reads jobs in one round trip."""

    def __init__(self, client: redis.Redis, read_many: ReadMany):
        self._redis = client
        self._read_many = read_many
        self._ids_after = client.register_script(_IDS_AFTER)

    def list(
        self,
        owner: str,
        *,
        status: JobStatus | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> tuple[list[JobRecord], str | None]:
        """The owner's jobs, newest first, and the cursor of the next page (None: last page).

        The cursor is the id of the last job of the previous page; ``ValueError`` when
        it is not one of the owner's jobs.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        owners = owner_key(owner)
        index = owners if status is None else owner_status_key(owner, status.value)
        jobs: list[JobRecord] = []
        after = cursor or ""
        batch = max(limit, _MIN_BATCH)
        while len(jobs) < limit:
            ids = self._ids_after(keys=[owners, index], args=[after, batch])
            if ids is None:
                if after == (cursor or ""):
                    raise ValueError("cursor does not name one of your jobs")
                break  # the last job we passed was deleted meanwhile: stop here
            records = self._read_many(ids)
            expired = [job_id for job_id, record in zip(ids, records) if record is None]
            if expired:  # Redis dropped these jobs; drop them from the index too
                self._redis.zrem(index, *expired)
            for record in records:
                if record is None:
                    continue
                after = record.id
                if status is None or record.status is status:
                    jobs.append(record)
                    if len(jobs) == limit:
                        break
            if len(ids) < batch:
                break  # that was the oldest
        more = len(jobs) == limit and bool(
            self._ids_after(keys=[owners, index], args=[jobs[-1].id, 1]))
        return jobs, jobs[-1].id if more else None
