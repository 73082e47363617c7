"""Job use cases behind the routes: plan against the model, store, enqueue, read, cancel.

Bad input is refused before anything is written (``shared.plan`` decides what a request
means; this module decodes images and talks to the store, storage and queue). An
accepted job is either stored and published to its model's queue, or marked failed and
answered with 503.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from celery import Celery
from PIL import Image

from api.errors import Conflict, Forbidden, InvalidInput, NotFound, Unavailable
from api.services.auth import Caller
from api.services.images import decode_image, decode_image_bytes, to_png
from api.services.quotas import QueueCaps
from api.services.status import ModelAvailability
from shared.adapters import Adapters
from shared.celery_app import GENERATE_TASK
from shared.jobstore import IdempotencyConflict, JobStore
from shared.model_registry import ModelRegistry, ModelSpec, UnknownModel, queue_for_model
from shared.plan import PlanError, plan_job
from shared.priorities import queue_level, queue_level_of
from shared.records import JobInputs, JobRecord, public_job
from shared.schemas import (
    JOB_ID_PATTERN,
    MAX_SEED,
    ErrorCode,
    GenerationRequest,
    JobPage,
    JobStatus,
    Task,
)
from shared.settings import Settings
from shared.storage import (
    POSTER_CONTENT_TYPE,
    Storage,
    image_key,
    input_key,
    job_prefix,
    poster_key,
)
from shared.webhooks import check_webhook_url

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY_CHARS = 255
# A worker that is starting loads its weights in seconds to a minute.
MODEL_RETRY_AFTER_SECONDS = 10
# ``init_image`` may name an output image of one of the caller's finished jobs instead of
# carrying one: "job:<job id>/<index>" (_JOB_IMAGE_REFERENCE; base64 has no ':', so it
# cannot be mistaken).
JOB_IMAGE_PREFIX = "job:"


@dataclass
class Submission:
    job: JobRecord
    created: bool  # False: an Idempotency-Key replay of an earlier job


@dataclass(frozen=True)
class ImageBytes:
    """An output image to send as it is."""

    data: bytes
    content_type: str


@dataclass(frozen=True)
class ImageRedirect:
    """An output image the client fetches from storage itself, at a short-lived URL."""

    url: str


@dataclass
class _Inputs:
    """The request's input images, decoded (not yet sized)."""

    init: Image.Image | None = None
    mask: Image.Image | None = None
    control: list[Image.Image] = field(default_factory=list)


@dataclass
class JobService:
    settings: Settings
    store: JobStore
    storage: Storage
    registry: ModelRegistry
    celery: Celery
    availability: ModelAvailability
    queue_caps: QueueCaps
    adapters: Adapters = field(default_factory=Adapters)

    # -- submit -------------------------------------------------------------------

    def submit(
        self, request: GenerationRequest, caller: Caller, idempotency_key: str | None = None
    ) -> Submission:
        """Plan ``request`` against its model, store the job and publish its task."""
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS:
            raise InvalidInput(
                "invalid_idempotency_key",
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters",
                "Idempotency-Key",
            )
        spec = self._model_for(request)
        refiner_spec = self._refiner_for(request)
        inputs = _decode_inputs(request, self._referenced_init_image(request, caller))
        try:
            planned = plan_job(
                request, spec,
                init_size=inputs.init.size if inputs.init is not None else None,
                random_seed=secrets.randbelow(MAX_SEED + 1),
                refiner_spec=refiner_spec,
                max_video_pixels=self.settings.max_video_pixels,
                adapters=self.adapters,
            )
        except PlanError as exc:
            raise InvalidInput(exc.code, exc.message, exc.field) from None
        # Decoded once the plan stands (an unknown ControlNet costs no decode); sized to the
        # plan when stored.
        inputs.control = [self._control_image(control.image, f"control.{index}.image", caller)
                          for index, control in enumerate(request.control)]
        if request.webhook is not None:
            try:
                check_webhook_url(str(request.webhook.url), self.settings)
            except ValueError as exc:
                raise InvalidInput("invalid_webhook_url", str(exc), "webhook.url") from None
        if not self.availability.is_served(spec.name):
            # Queued, it would wait for a worker that may never come.
            raise Unavailable(
                ErrorCode.MODEL_UNAVAILABLE.value,
                f"no generation worker is serving model '{spec.name}' right now; try again",
                retry_after_seconds=MODEL_RETRY_AFTER_SECONDS,
            )
        refiner = planned.plan.refiner
        if refiner is not None and not self.availability.is_co_served(spec.name, refiner.model):
            # The job goes to the base's queue: whichever worker takes it runs both stages.
            raise InvalidInput(
                "refiner_not_co_served",
                f"refiner '{refiner.model}' is not served by every worker that serves "
                f"'{spec.name}'; list both in those workers' LATENTD_WORKER_MODELS",
                "refiner.model",
            )
        queued_by_key = self.queue_caps.check(caller.owner, spec.name)

        job_id = JobStore.new_job_id()
        now = datetime.now(UTC)
        record = JobRecord(
            id=job_id, owner=caller.owner, status=JobStatus.QUEUED, created_at=now, updated_at=now,
            request=planned.plan, warnings=planned.warnings, metadata=request.metadata,
            queue_level=queue_level(planned.plan.priority, queued_by_key),
            inputs=self._store_inputs(job_id, inputs, planned.input_size,
                                      (planned.plan.width, planned.plan.height)),
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
        return Submission(self._publish(stored), created=True)

    def _model_for(self, request: GenerationRequest) -> ModelSpec:
        try:
            return self.registry.get(request.model)
        except UnknownModel:
            known = ", ".join(self.registry.names())
            raise InvalidInput(
                "unknown_model", f"unknown model '{request.model}' (known: {known})", "model"
            ) from None

    def _refiner_for(self, request: GenerationRequest) -> ModelSpec | None:
        """The spec ``request.refiner`` names; None when it names none or an unknown model
        (the plan refuses the latter naming ``refiner.model``)."""
        if request.refiner is None:
            return None
        try:
            return self.registry.get(request.refiner.model)
        except UnknownModel:
            return None
    def _referenced_init_image(self, request: GenerationRequest, caller: Caller) -> bytes | None:
        """The bytes of the job image ``init_image`` names (``job:<id>/<index>``); None when
        it carries an image (or is unused)."""
        reference = request.init_image
        if (request.task is Task.TEXT_TO_IMAGE or reference is None
                or not reference.startswith(JOB_IMAGE_PREFIX)):
            return None
        return self._job_image(reference, "init_image", caller)

    def _control_image(self, image: str, field_name: str, caller: Caller) -> Image.Image:
        """A control image: base64, or ``job:<id>/<index>``, an output of the caller's job."""
        if image.startswith(JOB_IMAGE_PREFIX):
            image = base64.b64encode(self._job_image(image, field_name, caller)).decode("ascii")
        with _decoding:
            return decode_image(image, field_name, "RGB")

    def _job_image(self, reference: str, field_name: str, caller: Caller) -> bytes:
        """The bytes of the output image ``reference`` (``job:<id>/<index>``) names, under
        the image route's rules: another owner's job is reported exactly like a missing
        one (404); a job not succeeded, or without that image, is the request's fault
        (422). One resolver for every field that takes a job image."""
        match = _JOB_IMAGE_REFERENCE.fullmatch(reference)
        if match is None:
            raise InvalidInput("invalid_image", f"{field_name} names a job image as "
                               "job:<job id>/<index>, e.g. job:job_0123456789abcdef01234567/0",
                               field_name)
        job_id, index = match[1], int(match[2])
        job = self.store.get(job_id)
        if job is None or not caller.may_see(job.owner):
            raise NotFound(f"job '{job_id}' not found", "job_not_found", field_name)
        if job.status is not JobStatus.SUCCEEDED:
            raise InvalidInput("job_not_finished", f"{field_name}: job '{job_id}' is "
                               f"{job.status.value}; only a succeeded job's images can be used",
                               field_name)
        info = next((i for i in job.images if i.index == index), None)
        if info is None:
            raise InvalidInput("image_not_found", f"{field_name}: job '{job_id}' has no image "
                               f"{index} (it has {len(job.images)})", field_name)
        try:
            return self.storage.get(image_key(job_id, index, info.format.value))
        except KeyError:
            raise InvalidInput("image_not_found", f"{field_name}: image {index} of job "
                               f"'{job_id}' is gone", field_name) from None

    def _store_inputs(
        self, job_id: str, inputs: _Inputs, size: tuple[int, int] | None,
        canvas: tuple[int, int],
    ) -> JobInputs:
        """Each input image resized once to the plan's input size (control images: to the
        output size), then stored as PNG."""
        stored = JobInputs()
        for index, image in enumerate(inputs.control):
            key = input_key(job_id, f"control-{index}")
            self.storage.put(key, to_png(_resized(image, canvas, Image.Resampling.LANCZOS)),
                             "image/png")
            stored.control_image_keys.append(key)
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

    def _publish(self, job: JobRecord) -> JobRecord:
        # The job is stored by now, so the caller answers 202 with it either way: an error
        # here would invite the client to retry and make a second job.
        return publish_generation(self.store, self.celery, job)

    # -- reads and changes --------------------------------------------------------

    def get(self, job_id: str, caller: Caller) -> JobRecord:
        return _visible(self.store.get(job_id), job_id, caller)

    def list(
        self, caller: Caller, status: JobStatus | None, cursor: str | None, limit: int,
        owner: str | None = None,
    ) -> JobPage:
        """The caller's jobs, newest first; an admin may name another ``owner``."""
        if owner is not None and not caller.may_see(owner):
            raise Forbidden("only an admin key may list another key's jobs", "owner")
        try:
            records, next_cursor = self.store.list_jobs(
                owner or caller.owner, status=status, cursor=cursor, limit=limit)
        except ValueError as exc:
            # A well-formed id that names none of the caller's jobs: nothing to page from.
            raise NotFound(str(exc), "cursor_not_found", "cursor") from None
        return JobPage(jobs=[public_job(r) for r in records], next_cursor=next_cursor)

    def cancel(self, job_id: str, caller: Caller) -> JobRecord:
        """Queued → canceled now; running → the worker stops within a step; terminal: as is."""
        self.get(job_id, caller)
        job = self.store.request_cancel(job_id)
        if job is None:
            raise NotFound(f"job '{job_id}' not found", "job_not_found")
        return job

    def delete(self, job_id: str, caller: Caller) -> None:
        """Cancel if still live, then remove the record and every stored file of the job."""
        job = self.get(job_id, caller)
        if not job.status.is_terminal():
            self.store.request_cancel(job_id)
        self.store.delete(job_id)
        self.storage.delete_prefix(job_prefix(job_id))

    def image(self, job_id: str, index: int, caller: Caller) -> ImageBytes | ImageRedirect:
        """An output image of the caller's job: its bytes, or with
        ``LATENTD_IMAGE_DELIVERY=redirect`` a presigned URL of it."""
        job = self.get(job_id, caller)
        info = next((i for i in job.images if i.index == index), None)
        if info is None:
            raise NotFound(f"job '{job_id}' has no image {index}", "image_not_found")
        return self._deliver(job_id, index, image_key(job_id, index, info.format.value),
                             info.format.content_type)

    def poster(self, job_id: str, index: int, caller: Caller) -> ImageBytes | ImageRedirect:
        """The poster frame (PNG) of one output video of the caller's job, delivered as
        ``image`` delivers the video."""
        job = self.get(job_id, caller)
        info = next((i for i in job.images if i.index == index), None)
        if info is None or info.frames is None:
            raise NotFound(f"job '{job_id}' has no video {index}", "image_not_found")
        return self._deliver(job_id, index, poster_key(job_id, index), POSTER_CONTENT_TYPE)

    def _deliver(self, job_id: str, index: int, key: str,
                 content_type: str) -> ImageBytes | ImageRedirect:
        if self.settings.image_delivery == "redirect":
            url = self.storage.url_for(key, self.settings.image_url_expiry_seconds)
            if url is not None:
                return ImageRedirect(url)
        try:
            data = self.storage.get(key)
        except KeyError:
            raise NotFound(f"image {index} of job '{job_id}' is gone", "image_not_found") from None
        return ImageBytes(data, content_type)


def _visible(job: JobRecord | None, job_id: str, caller: Caller) -> JobRecord:
    # Another owner's job is reported exactly like a missing one.
    if job is None or not caller.may_see(job.owner):
        raise NotFound(f"job '{job_id}' not found", "job_not_found")
    return job


def publish_generation(store: JobStore, celery: Celery, job: JobRecord) -> JobRecord:
    """Queue the job's task (only its id) to its model's queue with its priority; the job as
    it now stands: failed ``enqueue_failed`` if the queue was unreachable, because a job
    queued without a task would never be seen by a worker."""
    try:
        celery.send_task(
            GENERATE_TASK,
            args=[job.id],
            queue=queue_for_model(job.request.model),
            priority=queue_level_of(job),
        )
    except Exception as exc:
        log.exception("could not publish job %s", job.id)
        failed = store.mark_failed(
            job.id, ErrorCode.ENQUEUE_FAILED, f"the job queue is unreachable: {exc}"
        )
        return failed or job
    return job


def fingerprint(request: GenerationRequest) -> str:
    """Hash of the request as validated (canonical JSON), for Idempotency-Key replays.

    The images (up to 13 MB of base64 each) are hashed as they are rather than copied
    into the canonical JSON: a copy per step there cost the API tens of MB per request.
    """
    exclude: dict = {name: True for name in _IMAGE_FIELDS}
    exclude["control"] = {"__all__": {"image"}}
    fields = request.model_dump(mode="json", exclude=exclude)
    digest = hashlib.sha256(json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    images = [(name, getattr(request, name)) for name in sorted(_IMAGE_FIELDS)]
    images += [(f"control.{i}.image", c.image) for i, c in enumerate(request.control)]
    for name, image in images:
        digest.update(f"\0{name}:{'-' if image is None else len(image)}\0".encode())
        if image is not None:
            digest.update(image.encode())
    return digest.hexdigest()


_IMAGE_FIELDS = {"init_image", "mask_image"}
# An input image given as an earlier job's output: job:<job id>/<image index>.
_JOB_IMAGE_REFERENCE = re.compile(r"^job:(" + JOB_ID_PATTERN.strip("^$") + r")/(\d{1,2})$")
# Decoding an image holds its bytes and its pixels (up to ~60 MB at the 4-megapixel
# limit); a few at a time bound the API's memory however many uploads arrive at once.
MAX_CONCURRENT_DECODES = 2
_decoding = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)


def _decode_inputs(request: GenerationRequest, init_bytes: bytes | None = None) -> _Inputs:
    """Decode only the images the task uses; the plan refuses any other one unread.
    ``init_bytes``: the job image ``init_image`` names, already read."""
    with _decoding:
        return _decode_task_images(request, init_bytes)


def _decode_task_images(request: GenerationRequest, init_bytes: bytes | None) -> _Inputs:
    inputs = _Inputs()
    if init_bytes is not None:
        inputs.init = decode_image_bytes(init_bytes, "init_image", "RGB")
    elif request.task is not Task.TEXT_TO_IMAGE and request.init_image is not None:
        inputs.init = decode_image(request.init_image, "init_image", "RGB")
    if request.task is Task.INPAINT and request.mask_image is not None:
        inputs.mask = decode_image(request.mask_image, "mask_image", "L")
    return inputs


def _resized(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    return image if image.size == size else image.resize(size, resample)
