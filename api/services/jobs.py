"""Job use cases behind the routes: plan against the model, store, enqueue, read, cancel.

Bad input is refused before anything is written (``shared.plan`` decides what a request
means; this module decodes images and talks to the store, storage and queue). An
accepted job is either stored and published to its model's queue, or marked failed and
answered with 503.
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
from api.services.images import decode_image, to_png
from shared.celery_app import GENERATE_TASK, PRIORITY_LEVELS
from shared.jobstore import IdempotencyConflict, JobStore
from shared.model_registry import ModelRegistry, ModelSpec, UnknownModel, queue_for_model
from shared.plan import PlanError, plan_job
from shared.records import JobInputs, JobRecord, public_job
from shared.schemas import (
    MAX_SEED,
    ErrorCode,
    GenerationRequest,
    JobPage,
    JobStatus,
    Task,
)
from shared.settings import Settings
from shared.storage import Storage, image_key, input_key, job_prefix
from shared.webhooks import check_webhook_url

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY_CHARS = 255


@dataclass
class Submission:
    job: JobRecord
    created: bool  # False: an Idempotency-Key replay of an earlier job


@dataclass
class _Inputs:
    """The request's input images, decoded (not yet sized)."""

    init: Image.Image | None = None
    mask: Image.Image | None = None


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
        """Plan ``request`` against its model, store the job and publish its task."""
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS:
            raise InvalidInput(
                "invalid_idempotency_key",
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters",
                "Idempotency-Key",
            )
        spec = self._model_for(request)
        inputs = _decode_inputs(request)
        try:
            planned = plan_job(
                request, spec,
                init_size=inputs.init.size if inputs.init is not None else None,
                random_seed=secrets.randbelow(MAX_SEED + 1),
            )
        except PlanError as exc:
            raise InvalidInput(exc.code, exc.message, exc.field) from None
        if request.webhook is not None:
            try:
                check_webhook_url(str(request.webhook.url), self.settings)
            except ValueError as exc:
                raise InvalidInput("invalid_webhook_url", str(exc), "webhook.url") from None

        job_id = JobStore.new_job_id()
        now = datetime.now(UTC)
        record = JobRecord(
            id=job_id, owner=owner, status=JobStatus.QUEUED, created_at=now, updated_at=now,
            request=planned.plan, warnings=planned.warnings, metadata=request.metadata,
            inputs=self._store_inputs(job_id, inputs, planned.input_size),
        )
        try:
            stored, created = self.store.create(
                record, idempotency_key=idempotency_key, fingerprint=fingerprint(request)
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
        return Submission(stored, created=True)

    def _model_for(self, request: GenerationRequest) -> ModelSpec:
        try:
            return self.registry.get(request.model)
        except UnknownModel:
            known = ", ".join(self.registry.names())
            raise InvalidInput(
                "unknown_model", f"unknown model '{request.model}' (known: {known})", "model"
            ) from None

    def _store_inputs(
        self, job_id: str, inputs: _Inputs, size: tuple[int, int] | None
    ) -> JobInputs:
        """Each input image resized once to the plan's input size, then stored as PNG."""
        stored = JobInputs()
        if size is None:
            return stored
        if inputs.init is not None:
            stored.init_image_key = input_key(job_id, "init")
            init = _resized(inputs.init, size, Image.Resampling.LANCZOS)
            self.storage.put(stored.init_image_key, to_png(init), "image/png")
        if inputs.mask is not None:
            stored.mask_image_key = input_key(job_id, "mask")
            # Nearest keeps the mask's edge where the client painted it.
            mask = _resized(inputs.mask, size, Image.Resampling.NEAREST)
            self.storage.put(stored.mask_image_key, to_png(mask), "image/png")
        return stored

    def _publish(self, job: JobRecord) -> None:
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
            self.store.mark_failed(
                job.id, ErrorCode.ENQUEUE_FAILED, f"the job queue is unreachable: {exc}"
            )
            raise Unavailable(
                ErrorCode.ENQUEUE_FAILED.value, "the job queue is unreachable; try again",
                retry_after_seconds=5,
            ) from None

    # -- reads and changes --------------------------------------------------------

    def get(self, job_id: str, owner: str) -> JobRecord:
        job = self.store.get(job_id)
        # Another owner's job is reported exactly like a missing one.
        if job is None or job.owner != owner:
            raise NotFound(f"job '{job_id}' not found", "job_not_found")
        return job

    def list(
        self, owner: str, status: JobStatus | None, cursor: str | None, limit: int
    ) -> JobPage:
        try:
            records, next_cursor = self.store.list_jobs(owner, status=status, cursor=cursor, limit=limit)
        except ValueError as exc:
            raise InvalidInput("invalid_cursor", str(exc), "cursor") from None
        return JobPage(jobs=[public_job(r) for r in records], next_cursor=next_cursor)

    def cancel(self, job_id: str, owner: str) -> JobRecord:
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
        try:
            data = self.storage.get(image_key(job_id, index, info.format.value))
        except KeyError:
            raise NotFound(f"image {index} of job '{job_id}' is gone", "image_not_found") from None
        return data, info.format.content_type


def fingerprint(request: GenerationRequest) -> str:
    """Hash of the request as validated (canonical JSON), for Idempotency-Key replays."""
    canonical = json.dumps(
        request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _decode_inputs(request: GenerationRequest) -> _Inputs:
    """Decode only the images the task uses; the plan refuses any other one unread."""
    inputs = _Inputs()
    if request.task is not Task.TEXT_TO_IMAGE and request.init_image is not None:
        inputs.init = decode_image(request.init_image, "init_image", "RGB")
    if request.task is Task.INPAINT and request.mask_image is not None:
        inputs.mask = decode_image(request.mask_image, "mask_image", "L")
    return inputs


def _resized(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    return image if image.size == size else image.resize(size, resample)
