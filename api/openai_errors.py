"""OpenAI's error shape on the ``/v1/images`` routes: ``{"error": {"message", "type",
"param", "code"}}``, with the statuses OpenAI uses (400 for any bad input).

``OpenAIRoute`` is the route class of that router only: it turns every failure raised
while serving one of its routes (auth, validation, the job service, waiting) into that
shape, so the rest of the API keeps latentd's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import redis
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import ApiError
from api.openai_schemas import OpenAIErrorBody, OpenAIErrorDetail

log = logging.getLogger(__name__)

# latentd request fields → the OpenAI parameter a client sent for them, so a refusal from
# the job service names a parameter the client knows.
_PARAM_OF_FIELD = {
    "init_image": "image",
    "mask_image": "mask",
    "width": "size",
    "height": "size",
    "num_images": "n",
    "steps": "quality",
    "guidance_scale": "style",
    "task": "model",
    "image[]": "image",
}


def error_type(status_code: int) -> str:
    """OpenAI's ``type`` for a status."""
    if status_code == 429:
        return "requests"
    if status_code >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error_response(
    status_code: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = OpenAIErrorBody(error=OpenAIErrorDetail(
        message=message, type=error_type(status_code), param=param, code=code))
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


def _from_api_error(exc: ApiError) -> JSONResponse:
    # OpenAI answers 400 to every request it cannot run as sent (a 10 MB image included);
    # latentd's 422 and 413 for such input become that.
    status = 400 if exc.status_code in (413, 422) else exc.status_code
    param = _PARAM_OF_FIELD.get(exc.field, exc.field) if exc.field else None
    return openai_error_response(status, exc.message, param, exc.code, exc.headers)


def _param_of(loc: tuple[Any, ...] | list[Any]) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:]
    if not parts:
        return None
    return _PARAM_OF_FIELD.get(parts[0], parts[0])


def _from_validation(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    if not errors:
        return openai_error_response(400, "the request is invalid", code="invalid_request")
    first = errors[0]
    kind = first.get("type", "")
    param = _param_of(first.get("loc", ()))
    detail = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "json_invalid":
        return openai_error_response(
            400, "We could not parse the JSON body of your request: "
                 f"{first.get('ctx', {}).get('error', 'malformed JSON')}",
            code="invalid_json")
    if kind == "missing" and param is None:
        return openai_error_response(400, "a request body is required", code="missing_body")
    if kind == "missing":
        return openai_error_response(
            400, f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if kind == "extra_forbidden":
        return openai_error_response(
            400, f"Unrecognized request argument supplied: {param}", param, "unknown_parameter")
    if param is None:
        return openai_error_response(400, detail, code="invalid_request")
    return openai_error_response(
        400, f"Invalid value for '{param}': {detail}", param, "invalid_value")


def _from_http_error(exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    return openai_error_response(exc.status_code, message, headers=exc.headers)


class OpenAIRoute(APIRoute):
    """A route whose failures are answered in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        serve = super().get_route_handler()

        async def serve_openai(request: Request) -> Response:
            try:
                return await serve(request)
            except RequestValidationError as exc:
                return _from_validation(exc)
            except ApiError as exc:
                return _from_api_error(exc)
            except StarletteHTTPException as exc:
                return _from_http_error(exc)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.error("Redis unavailable on %s %s: %s", request.method, request.url.path, exc)
                return openai_error_response(
                    503, "the job store is unreachable; try again", code="redis_unavailable",
                    headers={"Retry-After": "5"})
            except Exception:
                # The traceback goes to the log, never to the client.
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return openai_error_response(500, "internal server error", code="internal_error")

        return serve_openai
