"""The OpenAI Images API on latentd jobs: map each request onto a ``GenerationRequest``, run
it as an ordinary job through ``JobService`` (same keys, limits and queues; listed in
/v1/jobs), wait for it to finish, and answer as OpenAI does.

The mapping (README, "OpenAI-compatible API"):

- ``model``: a model of this service; an OpenAI name or none → the default model.
- ``size``: ``WxH`` the model can do runs as asked; one of OpenAI's fixed sizes it cannot
  do runs at the model's native scale with the same aspect (1024x1024 on the 64×64 emoji
  model → 64x64); any other size over the model's maximum is refused. ``auto`` or none:
  the model's default size (edits and variations: the image's size, scaled the same way
  when the model cannot do it). The answer's ``size`` says what ran.
- ``quality`` scales the model's default steps and ``style`` its guidance scale
  (``QUALITY_STEPS``, ``STYLE_GUIDANCE``).
- edits: inpaint the image's fully transparent pixels, or the mask's (OpenAI's masks mark
  the area to edit with alpha 0), from noise (strength 1), as OpenAI repaints them; an
  image with no transparent pixel and no mask is redrawn whole (image-to-image).
- variations: image-to-image at ``VARIATION_STRENGTH`` with an empty prompt.
"""

from __future__ import annotations

import base64
import re
import threading
from dataclasses import dataclass
from typing import Any

from fastapi import UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from api.openai_schemas import (
    ImageData,
    ImageEditForm,
    ImageGenerationRequest,
    ImagesResponse,
    ImageVariationForm,
    ResponseFormat,
)
from api.services.auth import Caller
from api.services.events import JobEvents
from api.services.images import MAX_IMAGE_BYTES, decode_image, to_png
from api.services.jobs import JobService
from shared.model_registry import ModelRegistry, ModelSpec, UnknownModel
from shared.records import JobRecord, image_path
from shared.schemas import GenerationRequest, JobStatus, OutputFormat, Task
from shared.storage import Storage, image_key

# Names OpenAI's clients send (dall-e-3, gpt-image-1, ...): the default model runs them,
# so code written for OpenAI works with its model names unchanged.
OPENAI_MODEL_PREFIXES = ("dall-e", "gpt-image", "chatgpt-image")
# OpenAI's fixed sizes; asked of a model that cannot make them, they keep their aspect
# at the model's native scale instead of being refused.
OPENAI_SIZES = frozenset({
    (256, 256), (512, 512), (1024, 1024), (1792, 1024), (1024, 1792), (1536, 1024),
    (1024, 1536),
})
# quality → multiple of the model's default steps (more steps: finer detail).
QUALITY_STEPS = {
    "low": 0.5, "auto": 1.0, "standard": 1.0, "medium": 1.0,
    "high": 2.0, "hd": 2.0, "xhigh": 3.0, "max": 3.0,
}
# style → multiple of the model's default guidance scale: stronger guidance gives the
# saturated, high-contrast look of OpenAI's "vivid", weaker a more natural one.
STYLE_GUIDANCE = {"natural": 0.7, "vivid": 1.3}
MAX_STEPS = 150
MAX_GUIDANCE_SCALE = 30.0
SIZE_MULTIPLE = 8
# OpenAI repaints the edited area from scratch: at a lower strength the transparent
# pixels' colour (usually black) would show through.
EDIT_STRENGTH = 1.0
# Keeps the composition and colours of the source and redraws its details; latentd's
# image-to-image default (0.75) drifts further from it.
VARIATION_STRENGTH = 0.6
VARIATION_PROMPT = ""

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
# Decoding holds an image's pixels (up to ~64 MB as RGBA at 4 megapixels): a few at once
# bound the API's memory however many uploads arrive together.
_decoding = threading.BoundedSemaphore(2)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bad_request(param: str | None, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, code, message, param)


# -- the mapping (pure) --------------------------------------------------------------


def model_for(registry: ModelRegistry, name: str | None) -> ModelSpec:
    """The model a request names; OpenAI's own model names (or none) → the default."""
    if name is None or name.startswith(OPENAI_MODEL_PREFIXES):
        return registry.get(None)
    try:
        return registry.get(name)
    except UnknownModel:
        known = ", ".join(registry.names())
        raise bad_request("model", f"unknown model '{name}' (known: {known}; OpenAI's model "
                                   "names run the default model)", "unknown_model") from None


def resolve_size(
    size: str | None, spec: ModelSpec, image_size: tuple[int, int] | None = None
) -> tuple[int, int]:
    """(width, height) to run ``size`` at on ``spec``; ``image_size``: an input image's."""
    if size is None or size == "auto":
        if image_size is None:
            return spec.default_width, spec.default_height
        width, height = (_round_down(side, spec.size_multiple) for side in image_size)
        if _fits(spec, width, height):
            return width, height
        return native_scale(spec, width, height)
    match = _SIZE.match(size)
    if match is None:
        raise bad_request("size", f"size '{size}' is not WIDTHxHEIGHT (e.g. '512x512') or "
                                  "'auto'", "invalid_size")
    width, height = int(match.group(1)), int(match.group(2))
    if width < SIZE_MULTIPLE or height < SIZE_MULTIPLE or width % SIZE_MULTIPLE or (
            height % SIZE_MULTIPLE):
        raise bad_request("size", f"size {size}: width and height must be multiples of "
                                  f"{SIZE_MULTIPLE}", "invalid_size")
    if _fits(spec, width, height):
        return width, height
    if (width, height) in OPENAI_SIZES:
        return native_scale(spec, width, height)
    raise bad_request("size", f"size {size} is more than model '{spec.name}' can make: "
                              f"{_sizes_of(spec)}", "unsupported_size")


def native_scale(spec: ModelSpec, width: int, height: int) -> tuple[int, int]:
    """``width``×``height`` scaled, aspect kept, so its short side is the model's native
    (default) short side, and scaled down further if that is still over its maximum."""
    scale = min(spec.default_width, spec.default_height) / min(width, height)
    scale = min(scale, spec.max_width / width, spec.max_height / height)
    multiple = spec.size_multiple
    return (_round_down(round(width * scale), multiple),
            _round_down(round(height * scale), multiple))


def _sizes_of(spec: ModelSpec) -> str:
    native = f"{spec.default_width}x{spec.default_height}"
    square = native_scale(spec, 1024, 1024)
    return (f"it is made for {native} and runs up to {spec.max_width}x{spec.max_height}; ask "
            f"for a size within that (multiples of {SIZE_MULTIPLE}), 'auto' ({native}), or "
            f"one of OpenAI's sizes, which run at its native scale (1024x1024 → "
            f"{square[0]}x{square[1]})")


def _fits(spec: ModelSpec, width: int, height: int) -> bool:
    return width <= spec.max_width and height <= spec.max_height


def _round_down(value: int, multiple: int) -> int:
    # The model's own multiple (16 for SD3 and Flux), which is a multiple of 8.
    return max(multiple, value - value % multiple)


def steps_for(quality: str | None, spec: ModelSpec) -> int | None:
    """Steps for ``quality``; None (the model's default) when it asks for none."""
    factor = QUALITY_STEPS.get(quality or "auto", 1.0)
    if factor == 1.0:
        return None
    return max(1, min(MAX_STEPS, round(spec.default_steps * factor)))


def guidance_for(style: str | None, spec: ModelSpec) -> float | None:
    """Guidance scale for ``style``; None (the model's default) when it asks for none."""
    if style is None:
        return None
    return round(min(MAX_GUIDANCE_SCALE, spec.default_guidance_scale * STYLE_GUIDANCE[style]), 2)


def check_supported(stream: bool | None) -> None:
    if stream:
        raise bad_request("stream", "streaming is not supported by this service; leave "
                                    "'stream' out or false", "unsupported_parameter")


def openai_metadata(endpoint: str, **asked: Any) -> dict[str, Any]:
    """What the OpenAI request asked for, as the job's metadata (None values left out)."""
    return {"openai": {"endpoint": endpoint,
                       **{name: value for name, value in asked.items() if value is not None}}}


@dataclass(frozen=True)
class EditInputs:
    """An edit's image, decoded: how to run it and the latentd mask (white = repaint)."""

    task: Task
    size: tuple[int, int]
    mask_png: bytes | None


def prepare_edit(image: bytes, mask: bytes | None) -> EditInputs:
    """Inpaint where the mask (else the image) is fully transparent; no transparent pixel
    and no mask: image-to-image. 400 naming ``image``/``mask`` for a bad upload."""
    with _decoding:
        picture = decode_image(_b64(image), "image", "RGBA")
        alpha = picture.getchannel("A")
        if mask is not None:
            marked = decode_image(_b64(mask), "mask", "RGBA")
            if marked.size != picture.size:
                raise bad_request("mask", f"mask is {marked.size[0]}x{marked.size[1]} but image "
                                          f"is {picture.size[0]}x{picture.size[1]}; they must "
                                          "be the same size", "invalid_mask")
            alpha = marked.getchannel("A")
        repaint = alpha.point(lambda a: 255 if a == 0 else 0)
    if repaint.getbbox() is None:  # not one fully transparent pixel
        if mask is not None:
            raise bad_request("mask", "mask has no fully transparent pixel (alpha 0), which "
                                      "marks the area to edit", "invalid_mask")
        return EditInputs(Task.IMAGE_TO_IMAGE, picture.size, None)
    return EditInputs(Task.INPAINT, picture.size, to_png(repaint))


def image_size_of(image: bytes) -> tuple[int, int]:
    """The size of an uploaded image (decoded once, so a bad upload is refused here)."""
    with _decoding:
        decoded: Image.Image = decode_image(_b64(image), "image", "RGB")
        return decoded.size


async def read_upload(upload: UploadFile, param: str) -> bytes:
    data = await upload.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise bad_request(param, f"{param} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB",
                          "image_too_large")
    if not data:
        raise bad_request(param, f"{param} is empty", "invalid_image")
    return data


def _one_image(form: ImageEditForm) -> UploadFile:
    uploads = ([form.image] if form.image is not None else []) + list(form.images or [])
    if not uploads:
        raise bad_request("image", "Missing required parameter: 'image'.",
                          "missing_required_parameter")
    if len(uploads) > 1:
        raise bad_request("image", f"{len(uploads)} images sent; this service edits one image "
                                   "per request", "too_many_images")
    return uploads[0]


# -- the service ---------------------------------------------------------------------


@dataclass(frozen=True)
class OpenAIAnswer:
    """The response body, and the job that made it (sent as ``X-Latentd-Job-Id``)."""

    job_id: str
    body: ImagesResponse


@dataclass
class OpenAIImages:
    """The three endpoints, each one job of the caller's, waited for up to ``wait_seconds``."""

    jobs: JobService
    events: JobEvents
    storage: Storage
    registry: ModelRegistry
    wait_seconds: float

    async def generate(self, body: ImageGenerationRequest, caller: Caller, base_url: str,
                       idempotency_key: str | None = None) -> OpenAIAnswer:
        """Text-to-image."""
        check_supported(body.stream)
        spec = model_for(self.registry, body.model)
        width, height = resolve_size(body.size, spec)
        request = GenerationRequest(
            task=Task.TEXT_TO_IMAGE, model=spec.name, prompt=body.prompt,
            width=width, height=height, num_images=body.n or 1,
            steps=steps_for(body.quality, spec), guidance_scale=guidance_for(body.style, spec),
            output_format=OutputFormat(body.output_format or "png"),
            metadata=openai_metadata("images/generations", model=body.model, size=body.size,
                                     quality=body.quality, style=body.style, user=body.user),
        )
        return await self._run(request, caller, body.response_format, base_url, idempotency_key)

    async def edit(self, form: ImageEditForm, caller: Caller, base_url: str,
                   idempotency_key: str | None = None) -> OpenAIAnswer:
        """Inpaint the transparent area (of the mask, else of the image)."""
        check_supported(form.stream)
        spec = model_for(self.registry, form.model)
        image = await read_upload(_one_image(form), "image")
        mask = await read_upload(form.mask, "mask") if form.mask is not None else None
        inputs = await run_in_threadpool(prepare_edit, image, mask)
        width, height = resolve_size(form.size, spec, inputs.size)
        request = GenerationRequest(
            task=inputs.task, model=spec.name, prompt=form.prompt,
            width=width, height=height, num_images=form.n or 1,
            steps=steps_for(form.quality, spec),
            init_image=_b64(image),
            mask_image=_b64(inputs.mask_png) if inputs.mask_png is not None else None,
            strength=EDIT_STRENGTH if inputs.task is Task.INPAINT else None,
            output_format=OutputFormat(form.output_format or "png"),
            metadata=openai_metadata("images/edits", model=form.model, size=form.size,
                                     quality=form.quality, user=form.user),
        )
        return await self._run(request, caller, form.response_format, base_url, idempotency_key)

    async def vary(self, form: ImageVariationForm, caller: Caller, base_url: str,
                   idempotency_key: str | None = None) -> OpenAIAnswer:
        """Image-to-image of the upload, with no prompt."""
        spec = model_for(self.registry, form.model)
        image = await read_upload(form.image, "image")
        size = await run_in_threadpool(image_size_of, image)
        width, height = resolve_size(form.size, spec, size)
        request = GenerationRequest(
            task=Task.IMAGE_TO_IMAGE, model=spec.name, prompt=VARIATION_PROMPT,
            width=width, height=height, num_images=form.n or 1,
            init_image=_b64(image), strength=VARIATION_STRENGTH,
            metadata=openai_metadata("images/variations", model=form.model, size=form.size,
                                     user=form.user),
        )
        return await self._run(request, caller, form.response_format, base_url, idempotency_key)

    async def _run(self, request: GenerationRequest, caller: Caller,
                   response_format: ResponseFormat | None, base_url: str,
                   idempotency_key: str | None) -> OpenAIAnswer:
        # The stream caps refuse the wait (429/503) before anything is stored.
        outcome = await self.events.submit_and_wait(
            lambda: self.jobs.submit(request, caller, idempotency_key), caller.owner,
            self.wait_seconds)
        job = outcome.job
        # From here on the job exists: every failure names it and tells the client not to
        # retry, since a retry would make a second job (the first goes on regardless).
        if outcome.wait_error is not None:
            raise not_delivered(job, 503, "redis_unavailable",
                                "the job store became unreachable while waiting")
        if not job.status.is_terminal():
            raise not_delivered(
                job, 504, "wait_timeout",
                f"still {job.status.value} after {self.wait_seconds:g} s "
                f"(LATENTD_MAX_WAIT_SECONDS); it goes on: follow it at /v1/jobs/{job.id}")
        if job.status is not JobStatus.SUCCEEDED:
            error = job.error
            raise not_delivered(job, 500, error.code.value if error else job.status.value,
                                f"{job.status.value}: "
                                f"{error.message if error else 'no images were made'}")
        return OpenAIAnswer(job.id, ImagesResponse(
            created=int((job.finished_at or job.created_at).timestamp()),
            data=await run_in_threadpool(self._images, job, response_format or "url", base_url),
            size=f"{job.request.width}x{job.request.height}",
            output_format=job.request.output_format.value,
        ))

    def _images(self, job: JobRecord, response_format: ResponseFormat,
                base_url: str) -> list[ImageData]:
        prompt = job.request.prompt
        if response_format == "url":
            root = base_url.rstrip("/")
            return [ImageData(url=root + image_path(job.id, image.index), revised_prompt=prompt)
                    for image in job.images]
        data = []
        for image in job.images:
            try:
                png = self.storage.get(image_key(job.id, image.index, image.format.value))
            except KeyError:
                raise not_delivered(job, 500, "image_not_found",
                                    f"image {image.index} is gone (deleted?)") from None
            data.append(ImageData(b64_json=_b64(png), revised_prompt=prompt))
        return data


JOB_ID_HEADER = "X-Latentd-Job-Id"


def not_delivered(job: JobRecord, status_code: int, code: str, message: str) -> ApiError:
    """A failure once ``job`` exists: named in the message and a header, and not to be
    retried (the official clients obey ``x-should-retry``)."""
    return ApiError(status_code, code, f"job {job.id}: {message}",
                    headers={"x-should-retry": "false", JOB_ID_HEADER: job.id})
