"""What the job store keeps about a job, and the public view the API and webhooks show.

The stored record holds what the service needs internally (owner, where the inputs
are); ``public_job`` turns it into the ``Job`` clients see, building image URLs from
the image records, so no worker ever writes an API path.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from shared.schemas import (
    EventType,
    ImageInfo,
    Job,
    JobError,
    JobPlan,
    JobStatus,
    Metrics,
    OutputFormat,
    PlanWarning,
    Progress,
    WebhookAttempt,
)


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


class JobRecord(BaseModel):
    """A job as the store keeps it; only ``shared.jobstore`` writes one."""

    id: str
    owner: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime
    progress: Progress = Field(default_factory=Progress)
    queue_position: int | None = None
    request: JobPlan
    warnings: list[PlanWarning] = Field(default_factory=list)
    inputs: JobInputs = Field(default_factory=JobInputs)
    images: list[OutputImage] = Field(default_factory=list)
    error: JobError | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    metadata: dict[str, Any] | None = None
    webhook_attempts: list[WebhookAttempt] = Field(default_factory=list)
    attempts: int = 0


class JobEvent(BaseModel):
    """What the store publishes on a job's channel at each change: the job as written."""

    type: EventType
    job: JobRecord


def image_path(job_id: str, index: int) -> str:
    """The API path of one output image (relative to the service's base URL)."""
    return f"/v1/jobs/{job_id}/images/{index}"


def public_job(record: JobRecord) -> Job:
    """The job as clients see it: no owner, no storage keys."""
    return Job(
        id=record.id,
        status=record.status,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        updated_at=record.updated_at,
        progress=record.progress,
        queue_position=record.queue_position,
        request=record.request,
        warnings=record.warnings,
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
        error=record.error,
        metrics=record.metrics,
        metadata=record.metadata,
        webhook_attempts=record.webhook_attempts,
        attempts=record.attempts,
    )
