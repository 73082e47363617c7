"""Request, response and error shapes of the OpenAI-compatible Images API (``/v1/images``).

They follow OpenAI's Images API reference, so the official clients work unchanged. Fields
OpenAI defines that cannot change what runs here (``moderation``, ``partial_images``, ...)
are accepted and ignored; fields it does not define are refused, as OpenAI refuses them.
How each field maps onto a latentd job: ``api.services.openai_images``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from shared.schemas import MAX_PROMPT_CHARS

SIZE_PATTERN = r"^(auto|[0-9]{1,5}x[0-9]{1,5})$"
# latentd runs at most 8 images per job (OpenAI allows 10).
MAX_IMAGES = 8
# `user` is recorded in the job's metadata, which is capped at 4 KB.
MAX_USER_CHARS = 256

# Every optional field is `X | Omitted`: null is taken (JSON), not documented (a form
# cannot send it); bounds go on X so the schema and the messages state them.
Omitted = SkipJsonSchema[None]
Count = Annotated[int, Field(ge=1, le=MAX_IMAGES)]
ModelName = Annotated[str, Field(max_length=100)]
Size = Annotated[str, Field(max_length=20, json_schema_extra={"pattern": SIZE_PATTERN})]
EndUser = Annotated[str, Field(max_length=MAX_USER_CHARS)]

ResponseFormat = Literal["url", "b64_json"]
Quality = Literal["auto", "low", "medium", "high", "standard", "hd", "xhigh", "max"]
Style = Literal["vivid", "natural"]
# gif and svg are OpenAI formats latentd does not write.
OutputFormatName = Literal["png", "jpeg", "webp"]
# A transparent background is not something a diffusion pipeline here can draw.
Background = Literal["auto", "opaque"]


class _ImageOptions(BaseModel):
    """What every images endpoint takes."""

    model: ModelName | Omitted = Field(None, description=(
        "A model of this service (`/v1/models`); an OpenAI name (`dall-e-*`, `gpt-image-*`, "
        "`chatgpt-image-*`) or none: the default model."))
    size: Size | Omitted = Field(None, description=(
        "`WIDTHxHEIGHT` within the model's maximum (multiples of 8), `auto`, or one of "
        "OpenAI's sizes, which run at the model's native scale when larger than it allows."))
    response_format: ResponseFormat | Omitted = Field(None, description="Default `url`.")
    user: EndUser | Omitted = Field(None, description="Recorded in the job's metadata.")


class _PromptedOptions(_ImageOptions):
    """What generations and edits take on top."""

    quality: Quality | Omitted = Field(None, description=(
        "Steps, as a multiple of the model's default: `low` ½, `auto`/`standard`/`medium` 1, "
        "`high`/`hd` 2, `xhigh`/`max` 3 (at most 150)."))
    output_format: OutputFormatName | Omitted = Field(None, description="Default `png`.")
    background: Background | Omitted = None
    output_compression: Annotated[int, Field(ge=0, le=100)] | Omitted = Field(
        None, description="Ignored.")
    partial_images: Annotated[int, Field(ge=0, le=3)] | Omitted = Field(
        None, description="Ignored.")
    stream: bool | Omitted = Field(None, description="Only `false`: no streaming here.")
    safety_identifier: EndUser | Omitted = Field(None, description="Ignored.")
    input_fidelity: Literal["high", "low"] | Omitted = Field(None, description="Ignored.")
    moderation: Literal["low", "auto"] | Omitted = Field(None, description="Ignored.")


class ImageGenerationRequest(_PromptedOptions):
    """Body of ``POST /v1/images/generations`` (JSON). Numbers are strict, as in /v1/jobs."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    n: Count | Omitted = None
    style: Style | Omitted = Field(None, description=(
        "Guidance, as a multiple of the model's default: `natural` 0.7, `vivid` 1.3."))


class ImageEditForm(_PromptedOptions):
    """Body of ``POST /v1/images/edits`` (multipart). Without ``mask``, the image's fully
    transparent pixels are repainted; an image with none is redrawn as a whole
    (image-to-image)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    image: UploadFile | Omitted = Field(None, description="PNG, JPEG or WebP, ≤ 10 MB.")
    # What the official clients send for a list of images; this service edits one.
    images: list[UploadFile] | Omitted = Field(None, alias="image[]")
    mask: UploadFile | Omitted = Field(None, description=(
        "A PNG the size of `image` whose fully transparent pixels (alpha 0) are repainted."))
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    n: Count | Omitted = None


class ImageVariationForm(_ImageOptions):
    """Body of ``POST /v1/images/variations`` (multipart): image-to-image, no prompt."""

    model_config = ConfigDict(extra="forbid")

    image: UploadFile = Field(description="PNG, JPEG or WebP, ≤ 10 MB.")
    n: Count | Omitted = None


class ImageData(BaseModel):
    """One image: a URL on this service or the file itself, and the prompt it ran with."""

    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    """What every images endpoint answers (200)."""

    created: int = Field(description="Unix time the images were finished.")
    data: list[ImageData]
    size: str = Field(description="`WIDTHxHEIGHT` the images were made at.")
    output_format: str = Field(description="`png`, `jpeg` or `webp`.")


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    error: OpenAIErrorDetail
