"""Multipart submits: ``POST /v1/jobs`` with a ``request`` part and image file parts, run
as the JSON request they stand for (so one validation, one set of limits, one error shape).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import FormData, UploadFile
from starlette.types import Message

from api.errors import InvalidInput, TooLarge
from api.services.images import MAX_IMAGE_BYTES
from api.services.jobs import JOB_IMAGE_PREFIX

# A multipart submit: the JSON body's fields as one `request` part (JSON text), each input
# image as a file part. It is read into the JSON body it stands for, so both kinds of body
# go through one validation, the same limits and the same error shape.
_IMAGE_PARTS = ("init_image", "mask_image")
_PARTS = ("request", *_IMAGE_PARTS)
_MAX_REQUEST_PART_BYTES = 1024 * 1024
# Enough for a stray part or two to be named in a 422 (`unknown field`); past it, 400.
_MAX_PARTS = 16
MULTIPART_SUBMIT_SCHEMA: dict[str, Any] = {
    "schema": {
        "type": "object",
        "required": ["request"],
        "additionalProperties": False,
        "properties": {
            "request": {"type": "string", "description": (
                "The job as JSON: the JSON body's fields (`GenerationRequest`), without the "
                "images, which come as the file parts.")},
            **{name: {"type": "string", "format": "binary",
                      "description": "PNG, JPEG or WebP; at most 10 MB and 4 megapixels."}
               for name in _IMAGE_PARTS},
        },
    },
    "encoding": {"request": {"contentType": "application/json"}},
}


class FormAsJsonRoute(APIRoute):
    """Runs a ``multipart/form-data`` request as the JSON request it stands for."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle_json = super().get_route_handler()

        async def handle(request: Request) -> Response:
            media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type == "multipart/form-data":
                request = _json_request(request, await _form_as_json(request))
            return await handle_json(request)

        return handle


async def _form_as_json(request: Request) -> bytes:
    """The JSON body of a multipart submit: its ``request`` part, plus each image file part
    as the base64 text the JSON body would carry."""
    async with request.form(max_files=_MAX_PARTS, max_fields=_MAX_PARTS) as form:
        body = await _request_part(form)
        for name in _IMAGE_PARTS:
            # A job's image is named inside the request part: there is no file to send.
            names_job_image = name == "init_image" and str(body.get(name, "")).startswith(
                JOB_IMAGE_PREFIX)
            if name in body and not names_job_image:
                raise InvalidInput("invalid_request", f"{name}: in a multipart body, send the "
                                   "image as a file part, not inside 'request'", name)
            part = form.get(name)
            if part is None:
                continue
            if names_job_image:
                raise InvalidInput("invalid_request", f"{name} names a job image and is sent "
                                   "as a file part too; send one of them", name)
            if not isinstance(part, UploadFile):
                raise InvalidInput("invalid_request", f"{name} must be a file part "
                                   f"(curl -F {name}=@image.png)", name)
            data = await part.read(MAX_IMAGE_BYTES + 1)
            if len(data) > MAX_IMAGE_BYTES:
                raise TooLarge("image_too_large", f"{name} is larger than 10 MB", name)
            body[name] = base64.b64encode(data).decode("ascii")
    return json.dumps(body).encode()


async def _request_part(form: FormData) -> dict[str, Any]:
    names = [name for name, _ in form.multi_items()]
    for name in names:
        if name not in _PARTS:
            raise InvalidInput("unknown_field", f"unknown field '{name}'", name)
        if names.count(name) > 1:
            raise InvalidInput("invalid_request", f"{name} is sent more than once", name)
    part = form.get("request")
    if part is None:
        raise InvalidInput("invalid_request", "a multipart body needs a 'request' part: the "
                           "job's fields as JSON", "request")
    # Sent as a file (curl -F request=@job.json), it is read as text within the same 1 MB
    # that Starlette allows a text part.
    text = part if isinstance(part, str) else await part.read(_MAX_REQUEST_PART_BYTES + 1)
    if len(text) > _MAX_REQUEST_PART_BYTES:
        raise TooLarge("payload_too_large", "request is larger than 1 MB", "request")
    try:
        body = json.loads(text)
    except UnicodeDecodeError:
        raise InvalidInput("invalid_json", "request is not UTF-8 text", "request") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput("invalid_json", f"request is not valid JSON at character {exc.pos}: "
                           f"{exc.msg}", "request") from None
    if not isinstance(body, dict):
        raise InvalidInput("invalid_request", "request must be a JSON object", "request")
    return body


def _json_request(request: Request, body: bytes) -> Request:
    """``request`` with ``body`` as its JSON body; later reads (a disconnect) reach the client."""
    headers = [(k, v) for k, v in request.scope["headers"]
               if k not in (b"content-type", b"content-length")]
    headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await request.receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({**request.scope, "headers": headers}, receive)
