"""The API in-process (TestClient) against a real redis-server: real job store, real broker."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from api.state import AppState
from shared.heartbeat import beat
from shared.jobstore import JobStore
from shared.settings import Settings
from shared.storage import Storage
from tests.conftest import free_port


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, data_dir=tmp_path / "data", max_wait_seconds=5,
                    default_model="tiny-random")


SERVED_SECONDS = 600


@pytest.fixture(autouse=True)
def served_models(request: pytest.FixtureRequest, redis_url: str, settings: Settings
                  ) -> Iterator[None]:
    """A heartbeat for every model, as a live worker writes it: submits are accepted only
    for served models. ``@pytest.mark.no_workers`` tests start with none."""
    if request.node.get_closest_marker("no_workers"):
        yield
        return
    client = redis.Redis.from_url(redis_url)
    for name in {settings.default_model, *settings.models}:
        beat(client, name, "test-worker", ttl_seconds=SERVED_SECONDS)
    yield
    client.close()


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


def message_job_id(message: dict) -> str:
    """The job id argument of one queued generation task message."""
    assert message["headers"]["task"] == "latentd.generate"
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return args[0]


def task_job_ids(broker: redis.Redis) -> list[str]:
    """The job id argument of every queued generation task."""
    return [message_job_id(m) for messages in queued_tasks(broker).values() for m in messages]


def png_b64(size: tuple[int, int], mode: str = "RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` under a real uvicorn on a free port (in a thread); yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
