"""FastAPI dependencies as ``Annotated`` aliases over the process's ``AppState``.

Everything they hand out was built once at startup (api/state.py); tests build the app
with their own settings, or swap a dependency via ``app.dependency_overrides``.

They are ``async def``: FastAPI runs a plain ``def`` dependency in the thread pool, a hop
per dependency per request, for what is an attribute read or a Redis call on the loop.
"""

from __future__ import annotations

from typing import Annotated

import redis
from fastapi import Depends, Request

from api.services.auth import Caller
from api.services.events import JobEvents
from api.services.jobs import JobService
from api.services.openai_images import OpenAIImages
from api.state import AppState
from shared.jobstore import JobStore
from shared.model_registry import ModelRegistry
from shared.settings import Settings
from shared.storage import Storage


async def get_state(request: Request) -> AppState:
    return request.app.state.latentd


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


async def get_store(state: StateDep) -> JobStore:
    return state.store


async def get_storage(state: StateDep) -> Storage:
    return state.storage


async def get_registry(state: StateDep) -> ModelRegistry:
    return state.registry


async def get_redis(state: StateDep) -> redis.Redis:
    """A synchronous client for quick reads (heartbeats, pings)."""
    return state.redis


async def get_caller(request: Request) -> Caller:
    """Who is calling (their API key), counted against their request rate.

    Reads its two headers itself: every route solves this, and each declared parameter
    is one more for FastAPI to look up and validate per request."""
    state: AppState = request.app.state.latentd
    headers = request.headers
    caller = await state.auth.caller(headers.get("authorization"), headers.get("x-api-key"))
    await state.rate.hit(caller.owner)
    return caller


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
StorageDep = Annotated[Storage, Depends(get_storage)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_job_service(state: StateDep) -> JobService:
    return JobService(settings=state.settings, store=state.store,
                      storage=state.storage, registry=state.registry, celery=state.celery,
                      availability=state.availability, queue_caps=state.queue_caps,
                      adapters=state.adapters)


JobServiceDep = Annotated[JobService, Depends(get_job_service)]


def build_job_events(state: AppState) -> JobEvents:
    return JobEvents(hub=state.events, reader=state.reader)


async def get_job_events(state: StateDep) -> JobEvents:
    return build_job_events(state)


JobEventsDep = Annotated[JobEvents, Depends(get_job_events)]


async def get_openai_images(state: StateDep, jobs: JobServiceDep, events: JobEventsDep) -> OpenAIImages:
    return OpenAIImages(jobs=jobs, events=events, storage=state.storage, registry=state.registry,
                        wait_seconds=state.settings.max_wait_seconds)


OpenAIImagesDep = Annotated[OpenAIImages, Depends(get_openai_images)]
