"""Log lines of a request that concerns a job carry its id (shared/logs.py ``job_context``)."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from shared.logs import job_context

# /v1/jobs/{job_id}, and everything under it (images, events, cancel).
_JOB_PATH = re.compile(r"^/v1/jobs/(job_[0-9a-f]{24})(?:/|$)")


class JobLogContext:
    """ASGI middleware: runs a request whose path names a job inside that job's log context,
    access log line included (uvicorn writes it from within the response)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _JOB_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        with job_context(match.group(1)):
            await self.app(scope, receive, send)
