"""An owner's jobs, newest first, by status, a page at a time.

The owner index outlives single jobs (each create extends it), so ids of jobs that have
expired are still in it; a listing drops those as it passes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import redis

from shared.jobstore.keys import owner_key
from shared.records import JobRecord
from shared.schemas import JobStatus

# How many ids to read per round trip: a status filter may skip most of them.
_MIN_BATCH = 50

# Up to ARGV[2] ids after ARGV[1] ('' = from the newest), newest first; nil when the
# cursor is not in the index. One script, so the cursor's rank cannot move in between.
# KEYS: owner index.
_IDS_AFTER = r"""
local start = 0
if ARGV[1] ~= '' then
  local rank = redis.call('ZREVRANK', KEYS[1], ARGV[1])
  if not rank then return false end
  start = rank + 1
end
return redis.call('ZREVRANGE', KEYS[1], start, start + tonumber(ARGV[2]) - 1)
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
        index = owner_key(owner)
        jobs: list[JobRecord] = []
        after = cursor or ""
        batch = max(limit, _MIN_BATCH)
        while len(jobs) < limit:
            ids = self._ids_after(keys=[index], args=[after, batch])
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
        more = len(jobs) == limit and bool(self._ids_after(keys=[index], args=[jobs[-1].id, 1]))
        return jobs, jobs[-1].id if more else None
