"""The API in-process (TestClient) against a real redis-server: real job store, real broker."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from api.state import AppState
from shared.jobstore import JobStore
from shared.settings import Settings
from shared.storage import Storage


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, data_dir=tmp_path / "data", max_wait_seconds=5,
                    default_model="tiny-random")


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:  # runs the lifespan: the app state is built
        yield test_client


@pytest.fixture
def state(app: FastAPI, client: TestClient) -> AppState:
    return app.state.latentd


@pytest.fixture
def store(state: AppState) -> JobStore:
    """The very store the app uses."""
    return state.store


@pytest.fixture
def storage(state: AppState) -> Storage:
    return state.storage


@pytest.fixture
def broker(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def queued_tasks(broker: redis.Redis) -> dict[str, list[dict]]:
    """Celery messages waiting in the Redis broker, by list key (``gen.<model>[:<priority>]``)."""
    found = {}
    for key in sorted(broker.keys("gen.*")):
        if broker.type(key) == b"list":
            found[key.decode()] = [json.loads(m) for m in broker.lrange(key, 0, -1)]
    return found


def task_job_ids(broker: redis.Redis) -> list[str]:
    """The job id argument of every queued generation task."""
    ids = []
    for messages in queued_tasks(broker).values():
        for message in messages:
            assert message["headers"]["task"] == "latentd.generate"
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            ids.append(args[0])
    return ids


def png_b64(size: tuple[int, int], mode: str = "RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
