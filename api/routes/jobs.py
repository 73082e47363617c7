"""``/v1/jobs``: submit (JSON, or multipart with image files), read, list, cancel, delete,
fetch images, follow events."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from pydantic import StringConstraints, TypeAdapter, ValidationError
from sse_starlette import EventSourceResponse

from api.deps import (
    CallerDep,
    JobEventsDep,
    JobServiceDep,
    SettingsDep,
    build_job_events,
    get_caller,
)
from api.services.events import JobEvents
from api.services.job_reads import public_json
from api.services.jobs import ImageBytes, ImageRedirect
from api.state import AppState
from api.uploads import MULTIPART_SUBMIT_SCHEMA, FormAsJsonRoute
from shared.records import JobRecord, public_job
from shared.schemas import JOB_ID_PATTERN, ErrorBody, GenerationRequest, Job, JobPage, JobStatus

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+)", re.IGNORECASE)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody}
    for code in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}

_JOB_ID_DESCRIPTION = "`job_` + 24 hex digits"
_PREFER_DESCRIPTION = "`wait=N`: block up to N seconds (capped) for the job to finish."
JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description=_JOB_ID_DESCRIPTION)]
PreferHeader = Annotated[str | None, Header(description=_PREFER_DESCRIPTION)]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(description="Same key and body → the same job; same key, other body → 409."),
]


def wait_seconds(prefer: str | None, cap: int) -> int:
    """Seconds asked for by an RFC 7240 ``Prefer: wait=N`` header, capped by the server."""
    match = _PREFER_WAIT.search(prefer or "")
    return min(int(match.group(1)), cap) if match else 0


def _answer(job: JobRecord, waited: int) -> Response:
    """200 once a waited-for job has finished, else 202; says which wait was applied.

    The public job's JSON as bytes: returned as a ``Job``, FastAPI would validate the
    model it was just handed once more before serializing it."""
    response = Response(public_json(job), media_type="application/json",
                        status_code=200 if waited and job.status.is_terminal() else 202)
    if waited:
        response.headers["Preference-Applied"] = f"wait={waited}"
    return response


async def _wait_if_asked(events: JobEvents, job: JobRecord, waited: int) -> JobRecord:
    """The job after ``Prefer: wait``; as it was if the wait itself fails (Redis away):
    the job exists either way, and the client is told so rather than given an error."""
    try:
        return await events.wait(job, waited)
    except redis.RedisError:
        log.warning("Prefer: wait on job %s failed; answering with the job as stored", job.id)
        return job


async def submit_job(
    body: GenerationRequest,
    service: JobServiceDep,
    events: JobEventsDep,
    caller: CallerDep,
    settings: SettingsDep,
    prefer: PreferHeader = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Queue a generation job (202); with ``Prefer: wait=N``, 200 once it has finished."""
    waited = wait_seconds(prefer, settings.max_wait_seconds)
    outcome = await events.submit_and_wait(
        lambda: service.submit(body, caller, idempotency_key), caller.owner, waited)
    submission, job = outcome.submission, outcome.job
    if outcome.wait_error is not None:
        # The job exists either way: the client is told so rather than given an error.
        log.warning("Prefer: wait on job %s failed (%s); answering with the job as stored",
                    job.id, outcome.wait_error)
    response = _answer(job, waited)
    if not submission.created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


router.add_api_route(
    "", submit_job, methods=["POST"], status_code=202, response_model=Job,
    route_class_override=FormAsJsonRoute,
    responses={
        **_ERRORS,
        200: {"model": Job, "description": "With `Prefer: wait=N`: the job finished within N s."},
    },
    openapi_extra={"requestBody": {"content": {"multipart/form-data": MULTIPART_SUBMIT_SCHEMA}}},
)


@router.get("", responses=_ERRORS)
def list_jobs(
    service: JobServiceDep,
    caller: CallerDep,
    status: JobStatus | None = None,
    cursor: Annotated[str | None, Query(pattern=JOB_ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    owner: Annotated[str | None, Query(max_length=64, description="admin keys: whose jobs")] = None,
) -> JobPage:
    """Your jobs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    return service.list(caller, status, cursor, limit, owner)


_JOB_ID = TypeAdapter(Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN)])


def _path_job_id(request: Request) -> str:
    """The ``{job_id}`` of the path, checked as a declared ``JobId`` parameter would be
    (the same 422 when it is not a job id)."""
    job_id: str = request.path_params["job_id"]
    try:
        return _JOB_ID.validate_python(job_id)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("path", "job_id")} for error in exc.errors()]) from None


# GET /v1/jobs/{id} reads its two inputs itself, and lists them here for the schema: the
# hottest route (clients poll it), and FastAPI works out each declared parameter's kind
# anew on every request, which measured 55 of its 120 µs beyond GET /healthz's.
_GET_JOB_PARAMETERS = [
    {"name": "job_id", "in": "path", "required": True, "description": _JOB_ID_DESCRIPTION,
     "schema": {"type": "string", "pattern": JOB_ID_PATTERN, "title": "Job Id"}},
    {"name": "prefer", "in": "header", "required": False, "description": _PREFER_DESCRIPTION,
     "schema": {"type": "string", "title": "Prefer"}},
]


@router.get("/{job_id}", response_model=Job, openapi_extra={"parameters": _GET_JOB_PARAMETERS},
            responses={
                **_ERRORS,
                202: {"model": Job, "description": "With `Prefer: wait=N`: not finished after N s."},
            })
async def get_job(request: Request) -> Response:
    """The job; with ``Prefer: wait=N``, once it has finished (200) or N seconds passed (202)."""
    # No dependencies to solve, and the job's public JSON as bytes, kept per stored state
    # (api/services/job_reads.py).
    job_id = _path_job_id(request)
    prefer = request.headers.get("prefer")
    state: AppState = request.app.state.latentd
    waited = wait_seconds(prefer, state.settings.max_wait_seconds)
    if not waited:
        # The job's read goes out first (with the other reads of this moment), and the
        # caller's key (a Redis read for a stored key) is checked while it is on its way:
        # one round trip's wait instead of two. The job is shown only once the key is known
        # to see it; a refused key fails the request before anything is shown.
        reply = state.job_reads.ask(job_id)
        try:
            caller = await get_caller(request)
        except BaseException:
            if not reply.cancel() and not reply.cancelled():
                reply.exception()  # answered already: its error, if any, is not this one
            raise
        return Response(state.job_reads.shown_to(caller, job_id,
                                                 state.job_reads.from_reply(await reply)),
                        media_type="application/json")
    caller = await get_caller(request)
    events = build_job_events(state)
    job = await _wait_if_asked(events, await state.job_reads.record(job_id, caller), waited)
    return _answer(job, waited)


@router.post("/{job_id}/cancel", responses=_ERRORS)
def cancel_job(job_id: JobId, service: JobServiceDep, caller: CallerDep) -> Job:
    """Cancel: queued jobs at once, running ones within a step; finished jobs stay as they are.

    Always 200 with the job as it now stands, so retrying a cancel is harmless.
    """
    return public_job(service.cancel(job_id, caller))


@router.delete("/{job_id}", status_code=204, responses=_ERRORS)
def delete_job(job_id: JobId, service: JobServiceDep, caller: CallerDep) -> Response:
    """Cancel the job if it is live, then delete it and its images."""
    service.delete(job_id, caller)
    return Response(status_code=204)


@router.get(
    "/{job_id}/images/{index}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {},
                                 "image/gif": {}, "video/mp4": {}}},
               307: {"description": "`LATENTD_IMAGE_DELIVERY=redirect`: to a presigned URL "
                                    "of the image, valid for a few minutes."},
               **_ERRORS},
)
def get_image(
    job_id: JobId, index: Annotated[int, Path(ge=0)], service: JobServiceDep, caller: CallerDep
) -> Response:
    """One output image or video, in the job's output format (or a redirect to it in
    storage)."""
    return _delivered(service.image(job_id, index, caller))


@router.get(
    "/{job_id}/images/{index}/poster",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}},
               307: {"description": "`LATENTD_IMAGE_DELIVERY=redirect`: to a presigned URL "
                                    "of the poster, valid for a few minutes."},
               **_ERRORS},
)
def get_poster(
    job_id: JobId, index: Annotated[int, Path(ge=0)], service: JobServiceDep, caller: CallerDep
) -> Response:
    """The poster frame of one output video: its first frame, as a PNG."""
    return _delivered(service.poster(job_id, index, caller))


def _delivered(image: ImageBytes | ImageRedirect) -> Response:
    if isinstance(image, ImageRedirect):
        # The URL expires in minutes: a cached redirect would outlive it.
        return RedirectResponse(image.url, status_code=307, headers={"Cache-Control": "no-store"})
    # Outputs never change once written (a re-run writes the same bytes).
    return Response(image.data, media_type=image.content_type,
                    headers={"Cache-Control": "private, max-age=86400, immutable"})


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **_ERRORS},
)
async def job_events(job_id: JobId, events: JobEventsDep, caller: CallerDep) -> EventSourceResponse:
    """Server-Sent Events: the current state, then queued/started/progress/completed."""
    return EventSourceResponse(await events.stream(job_id, caller), ping=15)
