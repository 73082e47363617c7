"""Where a job waits: its priority's band of queue levels, and its place in the band.

The levels are Celery's priorities on the Redis broker and the job store's queue order.
"""

from __future__ import annotations

from shared.records import JobRecord
from shared.schemas import Priority

# Kombu's Redis transport emulates priorities with one list per step (0-9) and serves
# lower numbers first. Each priority owns a band of levels; within its band a job is
# placed by how many jobs its key already has queued (fair share): a key's first queued
# job goes first in the band, its flood further back, so one key flooding the queue
# cannot starve another key's jobs of the same priority.
PRIORITY_BANDS = {Priority.HIGH: range(3), Priority.NORMAL: range(3, 7),
                  Priority.LOW: range(7, 10)}
# A key with this many jobs queued (or more) is placed 1, 2, 3 levels back in its band.
FAIR_SHARE_STEPS = (1, 4, 16)
PRIORITY_LEVELS = {priority: band[0] for priority, band in PRIORITY_BANDS.items()}


def queue_level(priority: Priority, queued_by_key: int) -> int:
    """The Celery priority of a new job of ``priority`` from a key that has
    ``queued_by_key`` jobs queued already."""
    band = PRIORITY_BANDS[priority]
    back = sum(1 for step in FAIR_SHARE_STEPS if queued_by_key >= step)
    return band[min(back, len(band) - 1)]


def queue_level_of(job: JobRecord) -> int:
    """The level the job is queued at (its band's first when none was chosen)."""
    if job.queue_level is not None:
        return job.queue_level
    return PRIORITY_LEVELS[job.request.priority]


def band_of(level: int) -> range:
    """The band of queue levels ``level`` belongs to (its priority's)."""
    return next(band for band in PRIORITY_BANDS.values() if level in band)
