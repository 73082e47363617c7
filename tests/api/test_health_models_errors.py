"""Probes, the model list, and the error shape for failures outside the job routes."""

from __future__ import annotations

import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.deps import get_store
from api.main import create_app
from shared.heartbeat import beat, heartbeat_key
from shared.settings import Settings, get_settings


def test_healthz_is_always_ok(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_needs_a_worker_for_the_default_model(
    client: TestClient, redis_url: str
) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_workers"
    assert "tiny-random" in response.json()["error"]["message"]

    beat(redis.Redis.from_url(redis_url), "tiny-random", "gen-1")
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["workers"]["tiny-random"] == 1


def test_readyz_reports_redis_down(settings: Settings) -> None:
    app = create_app()
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    app.dependency_overrides[get_settings] = lambda: down
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "redis_unavailable"
    assert response.headers["Retry-After"] == "5"


def test_models_lists_specs_and_live_availability(client: TestClient, redis_url: str) -> None:
    [model] = [m for m in client.get("/v1/models").json() if m["name"] == "tiny-random"]
    assert model["available"] is False and model["workers"] == 0
    assert (model["default_width"], model["max_width"]) == (64, 512)
    assert "ddim" in model["schedulers"] and "text-to-image" in model["tasks"]

    connection = redis.Redis.from_url(redis_url)
    beat(connection, "tiny-random", "gen-1")
    beat(connection, "tiny-random", "gen-2")
    [model] = [m for m in client.get("/v1/models").json() if m["name"] == "tiny-random"]
    assert model["available"] is True and model["workers"] == 2

    connection.delete(heartbeat_key("tiny-random", "gen-1"), heartbeat_key("tiny-random", "gen-2"))
    [model] = [m for m in client.get("/v1/models").json() if m["name"] == "tiny-random"]
    assert model["available"] is False


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "Not Found", "field": None}}
    wrong_method = client.put("/v1/jobs")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_unexpected_errors_are_500_without_a_traceback(app: FastAPI) -> None:
    def broken_store():
        raise RuntimeError("secret internals at /srv/latentd")

    app.dependency_overrides[get_store] = broken_store
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/jobs")
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal_error", "message": "internal server error", "field": None}}
    assert "secret" not in response.text and "Traceback" not in response.text


def test_openapi_docs_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert schema["info"]["title"] == "latentd"
    assert "/v1/jobs/{job_id}/events" in schema["paths"]
