"""``/v1/images``: OpenAI's Images API (generations, edits, variations) over latentd jobs.

Each request is one ordinary job of the caller's (listed in /v1/jobs, same keys and
limits), answered once it has finished; failures come in OpenAI's error shape.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Header, Request, Response

from api.deps import CallerDep, OpenAIImagesDep
from api.openai_errors import OpenAIRoute
from api.openai_schemas import (
    ImageEditForm,
    ImageGenerationRequest,
    ImagesResponse,
    ImageVariationForm,
    OpenAIErrorBody,
)
from api.services.openai_images import JOB_ID_HEADER, OpenAIAnswer

# In /openapi.json like every route; the schema-conformance run expects OpenAI's 400 for
# schema-valid input the model cannot run on these operations (tests/api/schemathesis.toml).
router = APIRouter(prefix="/v1/images", tags=["openai"], route_class=OpenAIRoute)

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorBody, "description": "Bad input; `param` names the parameter."},
    401: {"model": OpenAIErrorBody, "description": "A missing or unknown API key."},
    409: {"model": OpenAIErrorBody, "description": "`Idempotency-Key` reused with another body."},
    413: {"model": OpenAIErrorBody, "description": "The request body is too large."},
    429: {"model": OpenAIErrorBody, "description": "Over a rate or queue limit."},
    500: {"model": OpenAIErrorBody, "description": "The job failed; `code` says why."},
    503: {"model": OpenAIErrorBody, "description": "No worker serves the model right now."},
    504: {"model": OpenAIErrorBody,
          "description": "The job did not finish within `LATENTD_MAX_WAIT_SECONDS`; it goes on."},
}
MULTIPART = "multipart/form-data"  # what the official clients send (a Form default is urlencoded)
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(description="Same key and body → the same job; same key, other body → 409."),
]


def _answer(response: Response, answer: OpenAIAnswer) -> ImagesResponse:
    response.headers[JOB_ID_HEADER] = answer.job_id  # the job, in /v1/jobs
    return answer.body


@router.post("/generations", responses=_ERRORS)
async def create_image(
    body: ImageGenerationRequest, request: Request, response: Response, images: OpenAIImagesDep,
    caller: CallerDep, idempotency_key: IdempotencyKeyHeader = None,
) -> ImagesResponse:
    """Images from a prompt (a text-to-image job), once they are made."""
    return _answer(response, await images.generate(
        body, caller, str(request.base_url), idempotency_key))


@router.post("/edits", responses=_ERRORS)
async def edit_image(
    form: Annotated[ImageEditForm, Form(media_type=MULTIPART)], request: Request, response: Response,
    images: OpenAIImagesDep, caller: CallerDep, idempotency_key: IdempotencyKeyHeader = None,
) -> ImagesResponse:
    """The image's transparent area (or the mask's) repainted to the prompt (an inpaint job)."""
    return _answer(response, await images.edit(
        form, caller, str(request.base_url), idempotency_key))


@router.post("/variations", responses=_ERRORS)
async def create_variation(
    form: Annotated[ImageVariationForm, Form(media_type=MULTIPART)], request: Request, response: Response,
    images: OpenAIImagesDep, caller: CallerDep, idempotency_key: IdempotencyKeyHeader = None,
) -> ImagesResponse:
    """Variations of an image (an image-to-image job with no prompt)."""
    return _answer(response, await images.vary(
        form, caller, str(request.base_url), idempotency_key))
