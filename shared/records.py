"""What the job store keeps about a job, and the public view the API and webhooks show.

The stored record holds what the service needs internally (owner, where the inputs
are); ``public_job`` turns it into the ``Job`` clients see, building image URLs from
the image records, so no worker ever writes an API path.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.schemas import EventType, ImageInfo, Job, JobBase, OutputFormat


class JobInputs(BaseModel):
    """Storage keys of the job's input images, already at the size the plan runs."""

    init_image_key: str | None = None
    mask_image_key: str | None = None


class OutputImage(BaseModel):
    """One finished image: its seed, its size and the format it was stored in."""

    index: int
    seed: int
    width: int
    height: int
    format: OutputFormat


class JobRecord(JobBase):
    """A job as the store keeps it; only ``shared.jobstore`` writes one."""

    owner: str
    inputs: JobInputs = Field(default_factory=JobInputs)
    images: list[OutputImage] = Field(default_factory=list)


class JobEvent(BaseModel):
    """What the store publishes on a job's channel at each change: the job as written."""

    type: EventType
    job: JobRecord


def image_path(job_id: str, index: int) -> str:
    """The API path of one output image (relative to the service's base URL)."""
    return f"/v1/jobs/{job_id}/images/{index}"


def public_job(record: JobRecord) -> Job:
    """The job as clients see it: no owner, no storage keys, image URLs instead of formats."""
    shared = {name: getattr(record, name) for name in JobBase.model_fields}
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
            )
            for image in record.images
        ],
    )
