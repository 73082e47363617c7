"""Request, job and event shapes shared by the API and the workers (plain pydantic, no I/O)."""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

MAX_PROMPT_CHARS = 2000
MAX_METADATA_BYTES = 4096
# Deep nesting costs recursion in every encoder on the way (and 300 levels crashed one).
MAX_METADATA_DEPTH = 8
MAX_SEED = 2**32 - 1
# Base64 of a 10 MB file is ~13.4 MB of text; the decoded size is checked again later.
MAX_IMAGE_B64_CHARS = (10 * 1024 * 1024 * 4) // 3 + 4


class Task(StrEnum):
    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_TO_IMAGE = "image-to-image"
    INPAINT = "inpaint"
    OUTPAINT = "outpaint"
    UPSCALE = "upscale"
    TEXT_TO_VIDEO = "text-to-video"


# Tasks whose outputs are videos (frames at an fps, plus a poster frame), not images.
VIDEO_TASKS = frozenset({Task.TEXT_TO_VIDEO})
# What a frame count may be at most in any request; each model's own bounds are tighter.
MAX_FRAMES = 256
MAX_FPS = 60


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
    GIF = "gif"
    MP4 = "mp4"

    @property
    def content_type(self) -> str:
        return "video/mp4" if self is OutputFormat.MP4 else f"image/{self.value}"


# What each kind of task may be written as: WebP is a still or an animation.
IMAGE_FORMATS = (OutputFormat.PNG, OutputFormat.JPEG, OutputFormat.WEBP)
VIDEO_FORMATS = (OutputFormat.MP4, OutputFormat.WEBP, OutputFormat.GIF)
# A video request that names no format gets MP4 (H.264): every browser and player plays
# it, and it is a fraction of the size of an animated WebP or GIF of the same frames.
DEFAULT_VIDEO_FORMAT = OutputFormat.MP4


class EventType(StrEnum):
    """Job events on the SSE stream; webhooks subscribe to started/progress/completed."""

    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    COMPLETED = "completed"


WEBHOOK_EVENTS = (EventType.STARTED, EventType.PROGRESS, EventType.COMPLETED)

# Scheduler names a request may use; the worker maps each to a diffusers class.
# Noise-prediction samplers (SD 1.x/2.x, SDXL) ...
NOISE_SCHEDULERS = (
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
# ... and the flow-matching samplers of SD3 and Flux: their own Euler (the default), Heun
# (SD3 only: it takes no custom sigmas, which Flux passes) and DPM-Solver++ 2M on flow sigmas.
FLOW_SCHEDULERS = ("flow_match_euler", "flow_match_heun", "flow_match_dpmpp_2m")
SCHEDULERS = NOISE_SCHEDULERS + FLOW_SCHEDULERS


class GuidanceKind(StrEnum):
    """How a model is steered by ``guidance_scale`` (and so whether it reads a negative prompt).

    classifier-free: two passes, prompt and negative prompt (SD 1.x/2.x, SDXL, SD3);
    distilled: the scale is an input of one pass (Flux dev); a negative prompt needs
    true CFG (``true_cfg_scale``) where the model has it;
    none: the model takes no guidance (Flux schnell, turbo models).
    """

    CLASSIFIER_FREE = "classifier-free"
    DISTILLED = "distilled"
    NONE = "none"


class RefinerRequest(BaseModel):
    """SDXL base → refiner: the base denoises until ``switch_at`` of the schedule, the
    refiner (another registered model, served by the same worker) does the rest."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=100)
    switch_at: float = Field(0.8, gt=0, lt=1, strict=True)


class OutpaintMargins(BaseModel):
    """Pixels added on each side of the init image (multiples of 8)."""

    model_config = ConfigDict(extra="forbid")

    left: int = Field(0, ge=0, le=1024, multiple_of=8, strict=True)
    right: int = Field(0, ge=0, le=1024, multiple_of=8, strict=True)
    top: int = Field(0, ge=0, le=1024, multiple_of=8, strict=True)
    bottom: int = Field(0, ge=0, le=1024, multiple_of=8, strict=True)


class UpscaleTiling(BaseModel):
    """How an upscale input larger than the model's tile is cut: square tiles of ``size``
    input pixels, neighbours sharing ``overlap`` pixels that are blended when joined."""

    size: int
    overlap: int


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


# Per-request adapters: a few at once (each costs memory and time per step).
MAX_LORAS = 4
MAX_CONTROLS = 3
LORA_SCALE_LIMIT = 2.0
CONTROL_SCALE_LIMIT = 2.0


class LoraRequest(BaseModel):
    """A LoRA from LATENTD_LORA_DIR (its file stem) and how strongly it applies."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    # Negative scales push away from what the LoRA learned (some are made to be used so).
    scale: float = Field(1.0, ge=-LORA_SCALE_LIMIT, le=LORA_SCALE_LIMIT, strict=True)


class ControlSettings(BaseModel):
    """How one ControlNet steers a run: its weight and the part of the steps it acts in."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=100)
    scale: float = Field(1.0, ge=0, le=CONTROL_SCALE_LIMIT, strict=True)
    # Fractions of the denoising steps; start < end is checked by the plan.
    start: float = Field(0.0, ge=0, le=1, strict=True)
    end: float = Field(1.0, ge=0, le=1, strict=True)


class ControlRequest(ControlSettings):
    """A ControlNet and its conditioning image: base64, or ``job:<id>/<index>`` naming an
    output image of one of the caller's earlier jobs."""

    image: str = Field(min_length=1, max_length=MAX_IMAGE_B64_CHARS)


class GenerationRequest(BaseModel):
    """Body of ``POST /v1/jobs``: each field's own bounds. Rules that join fields or
    depend on the model are ``shared.plan.plan_job``'s, which names the field it refuses.
    """

    model_config = ConfigDict(extra="forbid")

    task: Task = Task.TEXT_TO_IMAGE
    model: str | None = Field(None, min_length=1, max_length=100)
    # Required for every task but upscale, which may run without one (``shared.plan``).
    prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS,
        description="What to draw. Required for every task except upscale.")
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    # Numbers are strict: JSON true/false or "3" are refused, not read as 1, 0 or 3.
    width: int | None = Field(None, ge=8, multiple_of=8, strict=True)
    height: int | None = Field(None, ge=8, multiple_of=8, strict=True)
    num_images: int = Field(1, ge=1, le=8, strict=True)
    steps: int | None = Field(None, ge=1, le=150, strict=True)
    guidance_scale: float | None = Field(None, ge=0, le=30, strict=True)
    # Flux only: real classifier-free guidance (two passes) with the negative prompt.
    true_cfg_scale: float | None = Field(None, ge=1, le=30, strict=True)
    scheduler: Literal[SCHEDULERS] | None = None  # type: ignore[valid-type]
    loras: list[LoraRequest] = Field(default_factory=list, max_length=MAX_LORAS)
    control: list[ControlRequest] = Field(default_factory=list, max_length=MAX_CONTROLS)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, strict=True)
    init_image: str | None = Field(
        None, max_length=MAX_IMAGE_B64_CHARS,
        description="Base64 (or a data: URL) of a PNG, JPEG or WebP image, or "
                    "`job:<job id>/<index>` to use an image of one of your finished jobs.")
    mask_image: str | None = Field(None, max_length=MAX_IMAGE_B64_CHARS)
    strength: float | None = Field(None, gt=0, le=1, strict=True)
    outpaint: OutpaintMargins | None = None
    refiner: RefinerRequest | None = None
    # Upscale only: the factor (one the model serves) and, for models that take one, how
    # much noise is added to the input first (more: more invented detail).
    scale: int | None = Field(None, ge=2, le=4, strict=True)
    noise_level: int | None = Field(None, ge=0, le=1000, strict=True)
    num_frames: int | None = Field(
        None, ge=1, le=MAX_FRAMES, strict=True,
        description="text-to-video: frames per video (default and bounds: the model's, "
                    "see /v1/models; frames × width × height at most LATENTD_MAX_VIDEO_PIXELS).")
    fps: int | None = Field(
        None, ge=1, le=MAX_FPS, strict=True,
        description="text-to-video: frames per second of the file (default and maximum: "
                    "the model's).")
    output_format: OutputFormat = Field(
        OutputFormat.PNG,
        description="Images: png (default), jpeg or webp. text-to-video: mp4 (default), "
                    "webp (animated) or gif.")
    priority: Priority = Priority.NORMAL
    webhook: WebhookSpec | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, metadata: dict[str, Any] | None) -> dict[str, Any] | None:
        if metadata is None:
            return None
        # Depth first: json.dumps of a very deep value would itself recurse too far.
        if _depth(metadata) > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata may nest at most {MAX_METADATA_DEPTH} levels deep")
        if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata must serialise to at most {MAX_METADATA_BYTES} bytes")
        return metadata


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (a hostile one may be very deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_METADATA_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(
            item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


class PlanWarning(BaseModel):
    """Something the service changed in a request so that it runs (the job says so)."""

    field: str
    message: str


class JobPlan(BaseModel):
    """A request resolved against its model: what the worker runs, exactly.

    Built once, at submit, by ``shared.plan.plan_job``; the job record stores it, the
    engine runs it, and the PNG metadata and the job response repeat it. Every value is
    the one used: defaults filled, every seed drawn, and a negative prompt, scheduler
    or strength the model would not honour already replaced (with a warning).
    """

    task: Task
    model: str
    prompt: str
    # None when there is none, or when the model/guidance could not use it.
    negative_prompt: str | None
    # Size of every output image; for outpaint the whole canvas (init image + margins).
    width: int
    height: int
    num_images: int
    steps: int
    guidance_scale: float
    scheduler: str
    seeds: list[int]
    # Denoising strength of image tasks (outpaint always re-noises fully: 1.0);
    # None for text-to-image, which starts from pure noise.
    strength: float | None
    outpaint: OutpaintMargins | None
    # Video tasks: frames per video and the file's frame rate; None for image tasks.
    # (num_images is the number of videos, each with its own seed.)
    num_frames: int | None = None
    fps: int | None = None
    output_format: OutputFormat
    priority: Priority
    webhook: WebhookSpec | None
    # What guidance_scale is: classifier-free ("CFG scale"), the distilled guidance input
    # of Flux dev, or nothing (then guidance_scale is 0).
    guidance: GuidanceKind = GuidanceKind.CLASSIFIER_FREE
    # Flux's true CFG scale, set only when it runs (above 1, with a negative prompt).
    true_cfg_scale: float | None = None
    # SDXL refiner models' aesthetic conditioning; None for every other model.
    aesthetic_score: float | None = None
    negative_aesthetic_score: float | None = None
    # Base → refiner handoff of an SDXL text-to-image job; None when there is none.
    refiner: RefinerPlan | None = None
    # Adapters the run adds to the model, in order (their images are the job's inputs).
    # Jobs whose loras or control differ cannot share one pipeline call: any key that
    # groups plans into one batch must include both.
    loras: list[LoraRequest] = Field(default_factory=list)
    control: list[ControlSettings] = Field(default_factory=list)
    # Upscale only (None for every other task): the factor, the noise level given to the
    # model (None when it takes none) and the tiling (None: the input ran in one piece).
    scale: int | None = None
    noise_level: int | None = None
    tile: UpscaleTiling | None = None


class RefinerPlan(BaseModel):
    """The refiner stage as it runs: the base denoises until ``switch_at``, the refiner
    from there, each with the plan's step count over the whole schedule."""

    model: str
    switch_at: float
    aesthetic_score: float
    negative_aesthetic_score: float



JobPlan.model_rebuild()


class Progress(BaseModel):
    step: int = 0
    total_steps: int = 0
    eta_seconds: float | None = None


class ErrorCode(StrEnum):
    """Why a job ended without images (``error.code`` of a failed or canceled job).

    - ``canceled``: canceled by its owner (or deleted while it ran);
    - ``timeout``: ran past LATENTD_TASK_SOFT_TIME_LIMIT and was stopped;
    - ``worker_lost``: started LATENTD_TASK_MAX_ATTEMPTS times and no worker finished it;
    - ``generation_failed``: the pipeline raised an error while running the job;
    - ``model_unavailable``: the worker that took the job could not load its model;
    - ``enqueue_failed``: the job was stored but its task could not be queued;
    - ``out_of_memory``: the device ran out of memory running the job (the worker goes on
      serving; fewer images or a smaller size may fit).
    """

    CANCELED = "canceled"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"
    GENERATION_FAILED = "generation_failed"
    MODEL_UNAVAILABLE = "model_unavailable"
    ENQUEUE_FAILED = "enqueue_failed"
    OUT_OF_MEMORY = "out_of_memory"


class JobError(BaseModel):
    code: ErrorCode
    message: str


class Metrics(BaseModel):
    queue_seconds: float | None = None
    inference_seconds: float | None = None
    total_seconds: float | None = None
    # Images denoised in the one pipeline call that made this job's (1: it ran alone;
    # more: it shared a batch with compatible jobs, see LATENTD_MAX_BATCH).
    batch_images: int | None = None


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


class ImageInfo(BaseModel):
    """An output image as the API shows it: where to fetch it and how it was made."""

    index: int
    url: str
    seed: int
    width: int
    height: int
    content_type: str
    # Videos: their frame count and rate, and a PNG of their first frame; None for images.
    frames: int | None = None
    fps: int | None = None
    poster_url: str | None = None


class JobBase(BaseModel):
    """What the stored record and the public job have in common."""

    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime
    progress: Progress = Field(default_factory=Progress)
    queue_position: int | None = None
    request: JobPlan
    warnings: list[PlanWarning] = Field(default_factory=list)
    error: JobError | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    metadata: dict[str, Any] | None = None
    webhook_attempts: list[WebhookAttempt] = Field(default_factory=list)
    attempts: int = 0


class Job(JobBase):
    """A job as the API returns it and webhooks carry it (no storage keys, no internals)."""

    images: list[ImageInfo] = Field(default_factory=list)


# Job ids are "job_" + 24 hex digits (shared.jobstore.JobStore.new_job_id); anything else
# is refused before it reaches a Redis key.
JOB_ID_PATTERN = r"^job_[0-9a-f]{24}$"


class JobPage(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = None


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
    min_width: int
    min_height: int
    max_width: int
    max_height: int
    default_steps: int
    default_guidance_scale: float
    default_scheduler: str
    schedulers: list[str]
    guidance: str
    family: str = "other"
    size_multiple: int = 8
    min_guidance_scale: float | None = None
    max_guidance_scale: float | None = None
    true_cfg: bool = False
    aesthetic_score: float | None = None
    negative_aesthetic_score: float | None = None
    # Video models' frame and rate bounds; None for image models.
    default_frames: int | None = None
    min_frames: int | None = None
    max_frames: int | None = None
    # A frame count must be 1 more than a multiple of this (1: any count; CogVideoX: 8).
    frame_step: int | None = None
    default_fps: int | None = None
    max_fps: int | None = None
    scales: list[int] = Field(default_factory=list)
    default_noise_level: int | None = None
    max_noise_level: int | None = None
    tile_size: int | None = None
    tile_overlap: int | None = None
    description: str = ""
