"""Request, job and event shapes shared by the API and the workers (plain pydantic, no I/O)."""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_PROMPT_CHARS = 2000
MAX_METADATA_BYTES = 4096
MAX_SEED = 2**32 - 1
# Base64 of a 10 MB file is ~13.4 MB of text; the decoded size is checked again later.
MAX_IMAGE_B64_CHARS = (10 * 1024 * 1024 * 4) // 3 + 4


class Task(StrEnum):
    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_TO_IMAGE = "image-to-image"
    INPAINT = "inpaint"
    OUTPAINT = "outpaint"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


class OutputFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"


class EventType(StrEnum):
    """Job events on the SSE stream; webhooks subscribe to started/progress/completed."""

    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    COMPLETED = "completed"


WEBHOOK_EVENTS = (EventType.STARTED, EventType.PROGRESS, EventType.COMPLETED)

# Scheduler names a request may use; the worker maps each to a diffusers class.
SCHEDULERS = (
    "ddpm",
    "ddim",
    "pndm",
    "lms",
    "heun",
    "euler",
    "euler_ancestral",
    "dpmpp_2m",
    "dpmpp_2m_karras",
    "unipc",
)


class OutpaintMargins(BaseModel):
    """Pixels added on each side of the init image (multiples of 8)."""

    model_config = ConfigDict(extra="forbid")

    left: int = Field(0, ge=0, le=1024, multiple_of=8)
    right: int = Field(0, ge=0, le=1024, multiple_of=8)
    top: int = Field(0, ge=0, le=1024, multiple_of=8)
    bottom: int = Field(0, ge=0, le=1024, multiple_of=8)


class WebhookSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl
    events: list[EventType] = Field(default_factory=lambda: [EventType.COMPLETED], min_length=1)

    @field_validator("events")
    @classmethod
    def _only_webhook_events(cls, events: list[EventType]) -> list[EventType]:
        for event in events:
            if event not in WEBHOOK_EVENTS:
                allowed = ", ".join(e.value for e in WEBHOOK_EVENTS)
                raise ValueError(f"webhook event '{event.value}' is not one of: {allowed}")
        return list(dict.fromkeys(events))


class GenerationRequest(BaseModel):
    """Body of ``POST /v1/jobs``. Model-dependent bounds (sizes) are checked by the service."""

    model_config = ConfigDict(extra="forbid")

    task: Task = Task.TEXT_TO_IMAGE
    model: str | None = Field(None, min_length=1, max_length=100)
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    width: int | None = Field(None, ge=8, multiple_of=8)
    height: int | None = Field(None, ge=8, multiple_of=8)
    num_images: int = Field(1, ge=1, le=8)
    steps: int | None = Field(None, ge=1, le=150)
    guidance_scale: float | None = Field(None, ge=0, le=30)
    scheduler: Literal[SCHEDULERS] | None = None  # type: ignore[valid-type]
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    init_image: str | None = Field(None, max_length=MAX_IMAGE_B64_CHARS)
    mask_image: str | None = Field(None, max_length=MAX_IMAGE_B64_CHARS)
    strength: float = Field(0.75, gt=0, le=1)
    outpaint: OutpaintMargins | None = None
    output_format: OutputFormat = OutputFormat.PNG
    priority: Priority = Priority.NORMAL
    webhook: WebhookSpec | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, metadata: dict[str, Any] | None) -> dict[str, Any] | None:
        if metadata is not None and len(json.dumps(metadata)) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata must serialise to at most {MAX_METADATA_BYTES} bytes")
        return metadata

    @model_validator(mode="after")
    def _inputs_match_task(self) -> GenerationRequest:
        needs_init = self.task is not Task.TEXT_TO_IMAGE
        if needs_init and not self.init_image:
            raise ValueError(f"init_image is required for task '{self.task.value}'")
        if not needs_init and (self.init_image or self.mask_image):
            raise ValueError("init_image and mask_image are only used by image tasks")
        if self.task is Task.INPAINT and not self.mask_image:
            raise ValueError("mask_image is required for task 'inpaint'")
        if self.task is Task.OUTPAINT:
            margins = self.outpaint
            if margins is None or not (margins.left or margins.right or margins.top or margins.bottom):
                raise ValueError("outpaint needs at least one non-zero margin")
        elif self.outpaint is not None:
            raise ValueError("outpaint margins are only used by task 'outpaint'")
        return self


class JobParams(BaseModel):
    """The normalised request stored on a job: defaults filled, every seed resolved.

    Input images are stored once in storage (keys below), never on the job itself.
    """

    task: Task
    model: str
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    num_images: int
    steps: int
    guidance_scale: float
    scheduler: str
    seed: int
    seeds: list[int]
    strength: float
    outpaint: OutpaintMargins | None
    output_format: OutputFormat
    priority: Priority
    webhook: WebhookSpec | None
    init_image_key: str | None = None
    mask_image_key: str | None = None


class Progress(BaseModel):
    step: int = 0
    total_steps: int = 0
    eta_seconds: float | None = None


class ImageInfo(BaseModel):
    index: int
    url: str
    seed: int
    width: int
    height: int
    content_type: str


class JobError(BaseModel):
    code: str
    message: str


class Metrics(BaseModel):
    queue_seconds: float | None = None
    inference_seconds: float | None = None
    total_seconds: float | None = None


class WebhookAttempt(BaseModel):
    """One HTTP delivery attempt of one webhook event."""

    event_id: str
    event_type: EventType
    attempt: int
    at: datetime
    status_code: int | None = None
    error: str | None = None
    duration_seconds: float
    delivered: bool


class Job(BaseModel):
    """A job as the API returns it and webhooks carry it."""

    id: str
    owner: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime
    progress: Progress = Field(default_factory=Progress)
    queue_position: int | None = None
    request: JobParams
    images: list[ImageInfo] = Field(default_factory=list)
    error: JobError | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    metadata: dict[str, Any] | None = None
    webhook_attempts: list[WebhookAttempt] = Field(default_factory=list)
    attempts: int = 0


class JobPage(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = None


class JobEvent(BaseModel):
    """What the job store publishes on a job's channel at each change."""

    type: EventType
    job_id: str
    status: JobStatus
    progress: Progress | None = None
    at: datetime


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """The one error shape: ``{"error": {"code", "message", "field"}}``."""

    error: ErrorDetail


class ModelInfo(BaseModel):
    name: str
    source: str
    tasks: list[Task]
    default_width: int
    default_height: int
    max_width: int
    max_height: int
    default_steps: int
    default_guidance_scale: float
    default_scheduler: str
    schedulers: list[str]
    description: str = ""
