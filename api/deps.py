"""FastAPI dependencies as ``Annotated`` aliases over the process's ``AppState``.

Everything they hand out was built once at startup (api/state.py); tests build the app
with their own settings, or swap a dependency via ``app.dependency_overrides``.
"""

from __future__ import annotations

from typing import Annotated

import redis
from fastapi import Depends, Header, Request

from api.services.auth import Caller
from api.services.events import JobEvents
from api.services.jobs import JobService
from api.services.openai_images import OpenAIImages
from api.state import AppState
from shared.jobstore import JobStore
from shared.model_registry import ModelRegistry
from shared.settings import Settings
from shared.storage import Storage


def get_state(request: Request) -> AppState:
    return request.app.state.latentd


StateDep = Annotated[AppState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


def get_store(state: StateDep) -> JobStore:
    return state.store


def get_storage(state: StateDep) -> Storage:
    return state.storage


def get_registry(state: StateDep) -> ModelRegistry:
    return state.registry


def get_redis(state: StateDep) -> redis.Redis:
    """A synchronous client for quick reads (heartbeats, pings)."""
    return state.redis


def get_caller(
    state: StateDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Caller:
    """Who is calling (their API key), counted against their request rate."""
    caller = state.auth.caller(authorization, x_api_key)
    state.rate.hit(caller.owner)
    return caller


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
StorageDep = Annotated[Storage, Depends(get_storage)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
CallerDep = Annotated[Caller, Depends(get_caller)]


def get_job_service(state: StateDep) -> JobService:
    return JobService(settings=state.settings, store=state.store, storage=state.storage,
                      registry=state.registry, celery=state.celery,
                      availability=state.availability, queue_caps=state.queue_caps)


JobServiceDep = Annotated[JobService, Depends(get_job_service)]


def get_job_events(state: StateDep) -> JobEvents:
    return JobEvents(hub=state.events, store=state.store)


JobEventsDep = Annotated[JobEvents, Depends(get_job_events)]


def get_openai_images(state: StateDep, jobs: JobServiceDep, events: JobEventsDep) -> OpenAIImages:
    return OpenAIImages(jobs=jobs, events=events, storage=state.storage, registry=state.registry,
                        wait_seconds=state.settings.max_wait_seconds)


OpenAIImagesDep = Annotated[OpenAIImages, Depends(get_openai_images)]
