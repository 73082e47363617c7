"""What the client returns and raises: jobs, events, errors (plain dataclasses)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})


class LatentdError(Exception):
    """A refusal from the API (its ``error`` object), or no answer at all.

    ``status_code`` is the HTTP status (``None`` when there was no answer), ``code``,
    ``message`` and ``field`` the API's; ``retry_after`` the seconds of a ``Retry-After``.
    """

    def __init__(self, code: str, message: str, field: str | None = None,
                 status_code: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status_code = status_code
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message

    @classmethod
    def from_response(cls, response: httpx.Response) -> LatentdError:
        retry_after = response.headers.get("retry-after")
        retry = float(retry_after) if retry_after and retry_after.isdigit() else None
        try:
            error = response.json()["error"]
            return cls(str(error["code"]), str(error["message"]), error.get("field"),
                       response.status_code, retry)
        except (ValueError, KeyError, TypeError):  # not the API's shape (a proxy's page)
            text = response.text.strip()[:200] or response.reason_phrase
            return cls("http_error", f"HTTP {response.status_code}: {text}", None,
                       response.status_code, retry)


class LatentdConnectionError(LatentdError):
    """The service did not answer (refused, unreachable, timed out)."""


class JobFailed(LatentdError):
    """``generate`` waited for a job that ended without images; ``job`` is how it ended."""

    def __init__(self, job: Job):
        error = job.error or {}
        super().__init__(str(error.get("code", job.status)),
                         f"job {job.id} {job.status}: {error.get('message', 'no images')}")
        self.job = job


@dataclass(frozen=True)
class Job:
    """A job as the API returned it; ``data`` is its whole JSON (``metrics``, ``warnings``,
    ``webhook_attempts``, ...), the other fields are copied from it."""

    id: str
    status: str
    progress: dict[str, Any]
    request: dict[str, Any]  # the request as it runs: defaults filled, seeds drawn
    images: list[dict[str, Any]]
    error: dict[str, Any] | None
    data: dict[str, Any]

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Job:
        return cls(id=data["id"], status=data["status"], progress=data.get("progress") or {},
                   request=data.get("request") or {}, images=data.get("images") or [],
                   error=data.get("error"), data=data)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class JobPage:
    """One page of ``list``; pass ``next_cursor`` back as ``cursor`` for the next."""

    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of a job: ``type`` is queued, started, progress or completed;
    ``job`` the job as that change left it."""

    type: str
    job: Job


class EventParser:
    """Server-Sent Events (the WHATWG rules the service follows), fed one line at a time."""

    def __init__(self) -> None:
        self._type = ""
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        """The event a blank line completes; ``None`` for every other line."""
        if not line:
            event_type, data = self._type or "message", "\n".join(self._data)
            dispatch = bool(self._data)
            self._type, self._data = "", []
            return _event(event_type, data) if dispatch else None
        if line.startswith(":"):  # a comment: the service's keep-alive pings
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        return None


def _event(event_type: str, data: str) -> Event:
    try:
        return Event(event_type, Job.from_api(json.loads(data)))
    except (ValueError, KeyError, TypeError):
        raise LatentdError("invalid_event", f"an event's data is not a job: {data[:200]}") from None


