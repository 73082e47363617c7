"""Job use cases behind the routes: validate against the model, store, enqueue, read, cancel.

Bad input is refused before anything is written; an accepted job is either stored
and published to its model's queue, or marked failed and answered with 503.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from celery import Celery
from PIL import Image

from api.errors import Conflict, InvalidInput, NotFound, Unavailable
from api.services.images import decode_image, fit, output_size, to_png
from shared.celery_app import GENERATE_TASK, PRIORITY_LEVELS
from shared.jobstore import IdempotencyConflict, JobStore
from shared.model_registry import ModelRegistry, ModelSpec, UnknownModel, queue_for_model
from shared.schemas import (
    MAX_SEED,
    GenerationRequest,
    Job,
    JobPage,
    JobParams,
    JobStatus,
    OutputFormat,
    Task,
)
from shared.settings import Settings
from shared.storage import Storage, image_key, input_key, job_prefix
from shared.webhooks import check_webhook_url

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY_CHARS = 255


@dataclass
class _Inputs:
    """Input images decoded and sized for the job, plus the job's output size."""

    width: int
    height: int
    init: Image.Image | None = None
    mask: Image.Image | None = None


@dataclass
class Submission:
    job: Job
    created: bool  # False: an Idempotency-Key replay of an earlier job


@dataclass
class JobService:
    settings: Settings
    store: JobStore
    storage: Storage
    registry: ModelRegistry
    celery: Celery

    # -- submit -------------------------------------------------------------------

    def submit(
        self, request: GenerationRequest, owner: str, idempotency_key: str | None = None
    ) -> Submission:
        """Validate ``request`` against its model, store the job and publish its task."""
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS:
            raise InvalidInput(
                "invalid_idempotency_key",
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters",
                "Idempotency-Key",
            )
        spec = self._model_for(request)
        inputs = self._prepare_inputs(request, spec)
        if request.webhook is not None:
            try:
                check_webhook_url(str(request.webhook.url), self.settings)
            except ValueError as exc:
                raise InvalidInput("invalid_webhook_url", str(exc), "webhook.url") from None

        job_id = JobStore.new_job_id()
        params = self._params(request, spec, inputs, job_id)
        _check_denoising_steps(params)
        now = datetime.now(UTC)
        job = Job(id=job_id, owner=owner, status=JobStatus.QUEUED, created_at=now,
                  updated_at=now, request=params, metadata=request.metadata)
        self._store_inputs(job_id, inputs)
        try:
            stored, created = self.store.create(
                job, idempotency_key=idempotency_key, fingerprint=fingerprint(request)
            )
        except IdempotencyConflict as exc:
            self.storage.delete_prefix(job_prefix(job_id))
            raise Conflict(
                "idempotency_key_reused",
                f"Idempotency-Key was already used with a different body (job {exc.job_id})",
                "Idempotency-Key",
            ) from None
        except Exception:
            self.storage.delete_prefix(job_prefix(job_id))
            raise
        if not created:
            self.storage.delete_prefix(job_prefix(job_id))
            return Submission(stored, created=False)
        self._publish(stored)
        return Submission(self.store.get(stored.id) or stored, created=True)

    def _model_for(self, request: GenerationRequest) -> ModelSpec:
        try:
            spec = self.registry.get(request.model)
        except UnknownModel:
            known = ", ".join(self.registry.names())
            raise InvalidInput(
                "unknown_model", f"unknown model '{request.model}' (known: {known})", "model"
            ) from None
        if request.task not in spec.tasks:
            tasks = ", ".join(t.value for t in spec.tasks)
            raise InvalidInput(
                "unsupported_task",
                f"model '{spec.name}' does not support task '{request.task.value}' "
                f"(supports: {tasks})",
                "task",
            )
        return spec

    def _prepare_inputs(self, request: GenerationRequest, spec: ModelSpec) -> _Inputs:
        if request.task is Task.TEXT_TO_IMAGE:
            inputs = _Inputs(
                width=request.width or spec.default_width,
                height=request.height or spec.default_height,
            )
            _check_size(spec, inputs.width, inputs.height, "width", "height")
            return inputs

        assert request.init_image is not None  # GenerationRequest's validator guarantees it
        init = decode_image(request.init_image, "init_image", "RGB")
        width, height = output_size(init, request.width, request.height)
        given = request.width is not None or request.height is not None
        # A size derived from the image is the image's fault, not the size fields'.
        fields = ("width", "height") if given else ("init_image", "init_image")
        init = fit(init, (width, height), Image.Resampling.LANCZOS)
        mask = None
        if request.mask_image is not None:
            mask = fit(decode_image(request.mask_image, "mask_image", "L"), (width, height),
                       Image.Resampling.BILINEAR)
        if request.task is Task.OUTPAINT:
            margins = request.outpaint
            assert margins is not None
            width += margins.left + margins.right
            height += margins.top + margins.bottom
            fields = ("outpaint", "outpaint")
        _check_size(spec, width, height, *fields)
        return _Inputs(width=width, height=height, init=init, mask=mask)

    def _params(
        self, request: GenerationRequest, spec: ModelSpec, inputs: _Inputs, job_id: str
    ) -> JobParams:
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        return JobParams(
            task=request.task,
            model=spec.name,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=inputs.width,
            height=inputs.height,
            num_images=request.num_images,
            steps=request.steps or spec.default_steps,
            guidance_scale=(request.guidance_scale if request.guidance_scale is not None
                            else spec.default_guidance_scale),
            scheduler=request.scheduler or spec.default_scheduler,
            seed=seed,
            seeds=[(seed + i) % (MAX_SEED + 1) for i in range(request.num_images)],
            strength=request.strength,
            outpaint=request.outpaint,
            output_format=request.output_format,
            priority=request.priority,
            webhook=request.webhook,
            init_image_key=input_key(job_id, "init") if inputs.init is not None else None,
            mask_image_key=input_key(job_id, "mask") if inputs.mask is not None else None,
        )

    def _store_inputs(self, job_id: str, inputs: _Inputs) -> None:
        if inputs.init is not None:
            self.storage.put(input_key(job_id, "init"), to_png(inputs.init), "image/png")
        if inputs.mask is not None:
            self.storage.put(input_key(job_id, "mask"), to_png(inputs.mask), "image/png")

    def _publish(self, job: Job) -> None:
        try:
            self.celery.send_task(
                GENERATE_TASK,
                args=[job.id],
                queue=queue_for_model(job.request.model),
                priority=PRIORITY_LEVELS[job.request.priority],
            )
        except Exception as exc:
            # Never leave an accepted job that no worker will ever see.
            log.exception("could not publish job %s", job.id)
            self.store.mark_failed(job.id, "enqueue_failed", f"the job queue is unreachable: {exc}")
            raise Unavailable(
                "enqueue_failed", "the job queue is unreachable; try again", retry_after_seconds=5
            ) from None

    # -- reads and changes --------------------------------------------------------

    def get(self, job_id: str, owner: str) -> Job:
        job = self.store.get(job_id)
        # Another owner's job is reported exactly like a missing one.
        if job is None or job.owner != owner:
            raise NotFound(f"job '{job_id}' not found", "job_not_found")
        return job

    def list(
        self, owner: str, status: JobStatus | None, cursor: str | None, limit: int
    ) -> JobPage:
        try:
            return self.store.list(owner, status=status, cursor=cursor, limit=limit)
        except ValueError as exc:
            raise InvalidInput("invalid_cursor", str(exc), "cursor") from None

    def cancel(self, job_id: str, owner: str) -> Job:
        """Queued → canceled now; running → the worker stops within a step; terminal: as is."""
        self.get(job_id, owner)
        job = self.store.request_cancel(job_id)
        if job is None:
            raise NotFound(f"job '{job_id}' not found", "job_not_found")
        return job

    def delete(self, job_id: str, owner: str) -> None:
        """Cancel if still live, then remove the record and every stored file of the job."""
        job = self.get(job_id, owner)
        if not job.status.is_terminal():
            self.store.request_cancel(job_id)
        self.store.delete(job_id)
        self.storage.delete_prefix(job_prefix(job_id))

    def image(self, job_id: str, index: int, owner: str) -> tuple[bytes, str]:
        """An output image's bytes and content type."""
        job = self.get(job_id, owner)
        info = next((i for i in job.images if i.index == index), None)
        if info is None:
            raise NotFound(f"job '{job_id}' has no image {index}", "image_not_found")
        extension = OutputFormat(info.content_type.removeprefix("image/")).value
        try:
            return self.storage.get(image_key(job_id, index, extension)), info.content_type
        except KeyError:
            raise NotFound(f"image {index} of job '{job_id}' is gone", "image_not_found") from None


def fingerprint(request: GenerationRequest) -> str:
    """Hash of the request as validated (canonical JSON), for Idempotency-Key replays."""
    canonical = json.dumps(
        request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_denoising_steps(params: JobParams) -> None:
    # Image-to-image and inpaint run steps * strength steps; zero would fail on the GPU.
    if params.task in (Task.IMAGE_TO_IMAGE, Task.INPAINT) and int(
        params.steps * params.strength
    ) < 1:
        raise InvalidInput(
            "no_denoising_steps",
            f"strength {params.strength} leaves no denoising steps out of {params.steps}; "
            "raise strength or steps",
            "strength",
        )


def _check_size(spec: ModelSpec, width: int, height: int, width_field: str, height_field: str):
    if width > spec.max_width:
        raise InvalidInput(
            "size_too_large",
            f"width {width} is over model '{spec.name}' maximum of {spec.max_width}",
            width_field,
        )
    if height > spec.max_height:
        raise InvalidInput(
            "size_too_large",
            f"height {height} is over model '{spec.name}' maximum of {spec.max_height}",
            height_field,
        )
