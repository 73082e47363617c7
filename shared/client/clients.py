"""``Client`` and ``AsyncClient``: one method per API call, on httpx."""

from __future__ import annotations

import base64
import builtins
import json
import mimetypes
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import httpx

from shared.client.results import (
    Event,
    EventParser,
    Job,
    JobFailed,
    JobPage,
    LatentdConnectionError,
    LatentdError,
)

DEFAULT_URL = "http://127.0.0.1:8000"
IMAGE_FIELDS = ("init_image", "mask_image")
# Seconds one ``Prefer: wait`` request asks for; the service caps it (LATENTD_MAX_WAIT_SECONDS)
# and answers sooner once the job is done, so waiting costs one request per this long.
WAIT_STEP_SECONDS = 30
# The service pings an event stream every 15 s: a longer silence means it is gone.
EVENTS_READ_TIMEOUT_SECONDS = 60


def submit_arguments(fields: Mapping[str, Any]) -> dict[str, Any]:
    """httpx arguments of a submit: a JSON body, or multipart when an image is bytes or a
    path (the ``request`` part holds the other fields as JSON)."""
    body = {name: value for name, value in fields.items() if value is not None}
    if body.get("control"):
        # Control images travel inside the JSON (or the `request` part) as base64 text.
        body["control"] = [{**entry, "image": _image_text(entry["image"])}
                           for entry in body["control"]]
    files: dict[str, tuple[str | None, bytes, str]] = {}
    for name in IMAGE_FIELDS:
        value = body.get(name)
        if isinstance(value, bytes | bytearray):
            files[name] = (name, bytes(value), "application/octet-stream")
        elif isinstance(value, os.PathLike):
            path = Path(value)
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            files[name] = (path.name, path.read_bytes(), content_type)
        else:
            continue
        del body[name]
    if not files:
        return {"json": body}
    return {"files": {"request": (None, json.dumps(body).encode(), "application/json"), **files}}


def _image_text(image: Any) -> Any:
    """A control image as the API takes it: bytes or a path become base64; text (base64
    or ``job:<id>/<index>``) is sent as it is."""
    if isinstance(image, os.PathLike):
        image = Path(image).read_bytes()
    if isinstance(image, bytes | bytearray):
        return base64.b64encode(bytes(image)).decode("ascii")
    return image


def _job_path(job_id: str) -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}"


def _list_params(status: str | None, limit: int | None, cursor: str | None,
                 owner: str | None) -> dict[str, str | int]:
    params = {"status": status, "limit": limit, "cursor": cursor, "owner": owner}
    return {name: value for name, value in params.items() if value is not None}


def _page(data: dict[str, Any]) -> JobPage:
    return JobPage([Job.from_api(job) for job in data["jobs"]], data.get("next_cursor"))


def _headers(api_key: str | None) -> dict[str, str]:
    # Authorization rather than X-API-Key: httpx drops it on a redirect to another host
    # (an image's presigned URL), so the key never leaves for the object store.
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise LatentdError.from_response(response)
    return response


def _wait_step(deadline: float | None) -> int:
    if deadline is None:
        return WAIT_STEP_SECONDS
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the job did not finish in time")
    return max(1, min(WAIT_STEP_SECONDS, int(remaining)))


def _connection_error(exc: httpx.TransportError, base_url: httpx.URL) -> LatentdConnectionError:
    return LatentdConnectionError("connection_error", f"no answer from {base_url}: {exc}")


class Client:
    """The blocking client; use it in a ``with`` block (or call ``close``)."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, *,
                 timeout: float = 30.0, transport: httpx.BaseTransport | None = None):
        self._http = httpx.Client(base_url=base_url, headers=_headers(api_key),
                                  timeout=timeout, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return _checked(self._http.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            raise _connection_error(exc, self._http.base_url) from exc

    def submit(self, prompt: str, *, idempotency_key: str | None = None,
               **fields: Any) -> Job:
        """Queue a job; returns it at once (queued)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        arguments = submit_arguments({"prompt": prompt, **fields})
        return Job.from_api(self._send("POST", "/v1/jobs", headers=headers, **arguments).json())

    def generate(self, prompt: str, *, wait: bool = True, timeout: float | None = None,
                 **fields: Any) -> Job:
        """Submit, and with ``wait`` return the finished job; raises ``JobFailed`` if it
        ended without images, ``TimeoutError`` past ``timeout`` seconds."""
        job = self.submit(prompt, **fields)
        if not wait:
            return job
        job = self.wait(job.id, timeout)
        if job.status != "succeeded":
            raise JobFailed(job)
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it has finished, however it ended (``Prefer: wait`` requests)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _wait_step(deadline)
            job = self.get(job_id, wait=step)
            if job.done:
                return job

    def get(self, job_id: str, *, wait: int | None = None) -> Job:
        """The job; with ``wait``, once done or after that many seconds (capped)."""
        headers, timeout = {}, self._http.timeout
        if wait:
            headers["Prefer"] = f"wait={wait}"
            timeout = httpx.Timeout(self._http.timeout.connect, read=wait + 30.0)
        return Job.from_api(self._send("GET", _job_path(job_id), headers=headers,
                                       timeout=timeout).json())

    def list(self, status: str | None = None, *, limit: int | None = None,
             cursor: str | None = None, owner: str | None = None) -> JobPage:
        """A page of the caller's jobs, newest first (``owner``: an admin key's choice)."""
        params = _list_params(status, limit, cursor, owner)
        return _page(self._send("GET", "/v1/jobs", params=params).json())

    def cancel(self, job_id: str) -> Job:
        """Cancel (a no-op on a finished job); the job as it now stands."""
        return Job.from_api(self._send("POST", f"{_job_path(job_id)}/cancel").json())

    def delete(self, job_id: str) -> None:
        """Delete the job and its images (canceling it first if it is live)."""
        self._send("DELETE", _job_path(job_id))

    def models(self) -> builtins.list[dict[str, Any]]:
        """Every model with its sizes, defaults and whether a worker serves it now."""
        models: builtins.list[dict[str, Any]] = self._send("GET", "/v1/models").json()
        return models

    def image(self, job_id: str, index: int = 0) -> bytes:
        """An output image's bytes (following a redirect to storage)."""
        path = f"{_job_path(job_id)}/images/{int(index)}"
        return self._send("GET", path, follow_redirects=True).content

    def events(self, job_id: str) -> Iterator[Event]:
        """The job's events as they happen: its current state first, ending after
        ``completed``."""
        timeout = httpx.Timeout(self._http.timeout.connect, read=EVENTS_READ_TIMEOUT_SECONDS)
        parser = EventParser()
        try:
            with self._http.stream("GET", f"{_job_path(job_id)}/events",
                                   timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise LatentdError.from_response(response)
                for line in response.iter_lines():
                    if (event := parser.feed(line)) is not None:
                        yield event
        except httpx.TransportError as exc:
            raise _connection_error(exc, self._http.base_url) from exc


class AsyncClient:
    """The asyncio client: the same methods as ``Client``, awaited; ``events`` is an async
    iterator. Use it in an ``async with`` block (or await ``aclose``)."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, *,
                 timeout: float = 30.0, transport: httpx.AsyncBaseTransport | None = None):
        self._http = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key),
                                       timeout=timeout, transport=transport)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return _checked(await self._http.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            raise _connection_error(exc, self._http.base_url) from exc

    async def submit(self, prompt: str, *, idempotency_key: str | None = None,
                     **fields: Any) -> Job:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        arguments = submit_arguments({"prompt": prompt, **fields})
        response = await self._send("POST", "/v1/jobs", headers=headers, **arguments)
        return Job.from_api(response.json())

    async def generate(self, prompt: str, *, wait: bool = True, timeout: float | None = None,
                       **fields: Any) -> Job:
        job = await self.submit(prompt, **fields)
        if not wait:
            return job
        job = await self.wait(job.id, timeout)
        if job.status != "succeeded":
            raise JobFailed(job)
        return job

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _wait_step(deadline)
            job = await self.get(job_id, wait=step)
            if job.done:
                return job

    async def get(self, job_id: str, *, wait: int | None = None) -> Job:
        headers, timeout = {}, self._http.timeout
        if wait:
            headers["Prefer"] = f"wait={wait}"
            timeout = httpx.Timeout(self._http.timeout.connect, read=wait + 30.0)
        response = await self._send("GET", _job_path(job_id), headers=headers, timeout=timeout)
        return Job.from_api(response.json())

    async def list(self, status: str | None = None, *, limit: int | None = None,
                   cursor: str | None = None, owner: str | None = None) -> JobPage:
        params = _list_params(status, limit, cursor, owner)
        return _page((await self._send("GET", "/v1/jobs", params=params)).json())

    async def cancel(self, job_id: str) -> Job:
        return Job.from_api((await self._send("POST", f"{_job_path(job_id)}/cancel")).json())

    async def delete(self, job_id: str) -> None:
        await self._send("DELETE", _job_path(job_id))

    async def models(self) -> builtins.list[dict[str, Any]]:
        models: builtins.list[dict[str, Any]] = (await self._send("GET", "/v1/models")).json()
        return models

    async def image(self, job_id: str, index: int = 0) -> bytes:
        path = f"{_job_path(job_id)}/images/{int(index)}"
        return (await self._send("GET", path, follow_redirects=True)).content

    async def events(self, job_id: str) -> AsyncIterator[Event]:
        timeout = httpx.Timeout(self._http.timeout.connect, read=EVENTS_READ_TIMEOUT_SECONDS)
        parser = EventParser()
        try:
            async with self._http.stream("GET", f"{_job_path(job_id)}/events",
                                         timeout=timeout) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise LatentdError.from_response(response)
                async for line in response.aiter_lines():
                    if (event := parser.feed(line)) is not None:
                        yield event
        except httpx.TransportError as exc:
            raise _connection_error(exc, self._http.base_url) from exc
