"""A request whose path names a job runs in that job's log context (shared/logs.py)."""

from __future__ import annotations

import asyncio

from starlette.types import Receive, Scope, Send

from api.log_context import JobLogContext
from shared.logs import current_job_id

JOB = "job_" + "0f" * 12


def job_seen_for(path: str) -> str | None:
    seen: list[str | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(current_job_id())

    async def receive() -> dict:
        return {"type": "http.request"}

    async def send(message: dict) -> None:
        pass

    asyncio.run(JobLogContext(app)({"type": "http", "path": path}, receive, send))
    assert current_job_id() is None  # only for the request
    return seen[0]


def test_the_job_a_path_names_is_the_requests_job() -> None:
    assert job_seen_for(f"/v1/jobs/{JOB}") == JOB
    assert job_seen_for(f"/v1/jobs/{JOB}/images/0") == JOB
    assert job_seen_for(f"/v1/jobs/{JOB}/events") == JOB


def test_other_paths_are_about_no_job() -> None:
    assert job_seen_for("/v1/jobs") is None
    assert job_seen_for(f"/v1/jobs/{JOB}x") is None
    assert job_seen_for("/v1/jobs/job_nothex") is None
    assert job_seen_for("/metrics") is None
