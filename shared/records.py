"""What the job store keeps about a job, and the public view the API and webhooks show.

The stored record holds what the service needs internally (owner, where the inputs
are); ``public_job`` turns it into the ``Job`` clients see, building image URLs from
the image records, so no worker ever writes an API path.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from pydantic import AnyHttpUrl, BaseModel, Field

from shared.schemas import EventType, ImageInfo, Job, JobBase, JobPlan, OutputFormat

# What stands in for a URL's hidden parts in the public view.
REDACTED = "***"


class JobInputs(BaseModel):
    """Storage keys of the job's input images, already at the size the plan runs."""

    init_image_key: str | None = None
    mask_image_key: str | None = None
    # One per ``plan.control`` entry, in order, at the plan's width x height.
    control_image_keys: list[str] = Field(default_factory=list)


class OutputImage(BaseModel):
    """One finished image or video: its seed, its size and the format it was stored in;
    a video also its frame count and rate (and a poster frame stored beside it)."""

    index: int
    seed: int
    width: int
    height: int
    format: OutputFormat
    frames: int | None = None
    fps: int | None = None


class JobRecord(JobBase):
    """A job as the store keeps it; only ``shared.jobstore`` writes one."""

    owner: str
    inputs: JobInputs = Field(default_factory=JobInputs)
    # The Celery priority it is queued at (0 first): its priority's band, placed in the
    # band by fair share (shared.celery_app.queue_level); None: the band's first level.
    queue_level: int | None = Field(None, ge=0, le=9)
    images: list[OutputImage] = Field(default_factory=list)


class JobEvent(BaseModel):
    """What the store publishes on a job's channel at each change: the job as written."""

    type: EventType
    job: JobRecord


def image_path(job_id: str, index: int) -> str:
    """The API path of one output image (relative to the service's base URL)."""
    return f"/v1/jobs/{job_id}/images/{index}"


def poster_path(job_id: str, index: int) -> str:
    """The API path of one output video's poster frame."""
    return f"{image_path(job_id, index)}/poster"


def redact_url(url: str) -> str:
    """``url`` with its userinfo and query string replaced by ``***``.

    Both are where credentials go (``https://user:token@host/hook?sig=...``), and the
    public job is shown in responses, event streams and webhook bodies, logged and
    forwarded by whoever receives them. Scheme, host, port and path stay, so the job
    still says where its events go.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _public_plan(plan: JobPlan) -> JobPlan:
    if plan.webhook is None:
        return plan
    # The stored plan keeps the real URL: delivery reads it from the record.
    url = AnyHttpUrl(redact_url(str(plan.webhook.url)))
    return plan.model_copy(update={"webhook": plan.webhook.model_copy(update={"url": url})})


def public_job(record: JobRecord) -> Job:
    """The job as clients see it: no owner, no storage keys, image URLs instead of formats,
    and the webhook URL without its credentials or query."""
    shared = {name: getattr(record, name) for name in JobBase.model_fields}
    shared["request"] = _public_plan(record.request)
    return Job(
        **shared,
        images=[
            ImageInfo(
                index=image.index,
                url=image_path(record.id, image.index),
                seed=image.seed,
                width=image.width,
                height=image.height,
                content_type=image.format.content_type,
                frames=image.frames,
                fps=image.fps,
                poster_url=(poster_path(record.id, image.index)
                            if image.frames is not None else None),
            )
            for image in record.images
        ],
    )
