"""One error shape for every failure: ``{"error": {"code", "message", "field"}}``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.schemas import ErrorBody, ErrorDetail

log = logging.getLogger(__name__)

# Fields whose pydantic length limit is really a size limit: over it is 413, not 422.
_SIZE_LIMITED_FIELDS = {"init_image", "mask_image"}

_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    """A failure the client should see as-is (status, code, message, offending field)."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


class InvalidInput(ApiError):
    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(422, code, message, field)


class TooLarge(ApiError):
    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(413, code, message, field)


class NotFound(ApiError):
    def __init__(self, message: str, code: str = "not_found", field: str | None = None):
        super().__init__(404, code, message, field)


class Forbidden(ApiError):
    def __init__(self, message: str, field: str | None = None):
        super().__init__(403, "forbidden", message, field)


class Conflict(ApiError):
    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(409, code, message, field)


class Unavailable(ApiError):
    def __init__(self, code: str, message: str, retry_after_seconds: int | None = None):
        headers = {"Retry-After": str(retry_after_seconds)} if retry_after_seconds else None
        super().__init__(503, code, message, headers=headers)


def error_response(
    status_code: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, field=field))
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


def _field_of(loc: Sequence[Any]) -> str | None:
    """Dotted location without the leading "body"/"query"/…; None for the body itself."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:]
    return ".".join(parts) or None


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    if not errors:
        return error_response(422, "invalid_request", "the request is invalid")
    first = errors[0]
    kind = first.get("type", "")
    raw_message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    field = _field_of(first.get("loc", ()))
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""

    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", "malformed JSON")
        # FastAPI reports the character offset where parsing stopped as the location.
        position = next((p for p in first.get("loc", ())[1:] if isinstance(p, int)), None)
        where = f" at character {position}" if position is not None else ""
        return error_response(400, "invalid_json",
                              f"the body is not valid JSON{where}: {detail}", "body")
    if kind == "missing" and field is None:
        return error_response(422, "missing_body", "a JSON request body is required", "body")
    if field is None and kind in ("model_attributes_type", "dict_type", "model_type"):
        return error_response(422, "invalid_request", "the body must be a JSON object", "body")
    if kind == "extra_forbidden":
        return error_response(422, "unknown_field", f"unknown field '{field}'{more}", field)
    if kind == "string_too_long" and field in _SIZE_LIMITED_FIELDS:
        return error_response(413, "image_too_large", f"{field} is larger than 10 MB", field)
    message = f"{field}: {raw_message}" if field else raw_message
    return error_response(422, "invalid_request", message + more, field)


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    methods: set[str] = set()
    routes = list(app.router.routes)
    while routes:
        route = routes.pop()
        included = getattr(route, "original_router", None)  # an included APIRouter
        if included is not None:
            routes.extend(included.routes)
            continue
        pattern = getattr(route, "path_regex", None)
        if pattern is not None and pattern.match(request.url.path):
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception FastAPI can raise into the one error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.field, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES_BY_STATUS.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route matching the path; one path may have
            # several routes (GET and DELETE /v1/jobs/{id}), so list them all.
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        return error_response(exc.status_code, code, message, headers=headers)

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def _redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.error("Redis unavailable on %s %s: %s", request.method, request.url.path, exc)
        return error_response(
            503, "redis_unavailable", "the job store is unreachable; try again",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log, never to the client.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error")
