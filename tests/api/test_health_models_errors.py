"""Probes, the model list, and the error shape for failures outside the job routes."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.deps import get_job_service
from api.main import InvalidConfiguration, create_app
from shared.heartbeat import beat, heartbeat_key
from shared.metrics import WorkerStats, publish_worker_stats
from shared.schemas import ErrorCode
from shared.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_healthz_is_always_ok(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.no_workers
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
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "redis_unavailable"
    assert response.headers["Retry-After"] == "5"


@pytest.mark.no_workers
def test_models_lists_specs_and_live_availability(client: TestClient, redis_url: str) -> None:
    [model] = [m for m in client.get("/v1/models").json() if m["name"] == "tiny-random"]
    assert model["available"] is False and model["workers"] == model["loaded_workers"] == 0
    assert (model["default_width"], model["max_width"]) == (64, 512)
    assert "ddim" in model["schedulers"] and "text-to-image" in model["tasks"]
    assert "flow_match_euler" not in model["schedulers"]
    assert model["guidance"] == "classifier-free"

    connection = redis.Redis.from_url(redis_url)
    beat(connection, "tiny-random", "gen-1")
    beat(connection, "tiny-random", "gen-2")
    [model] = [m for m in client.get("/v1/models").json() if m["name"] == "tiny-random"]
    assert model["available"] is True and model["workers"] == 2

    # Both report their stats: gen-1 holds tiny-random's weights, gen-2 evicted them.
    publish_worker_stats(connection, "gen-1", WorkerStats(("tiny-random",), 1), 60)
    publish_worker_stats(connection, "gen-2", WorkerStats(("tiny-random",), 1,
                                                          loaded_models=()), 60)
    [model] = [m for m in client.get("/v1/models").json() if m["name"] == "tiny-random"]
    assert model["workers"] == 2 and model["loaded_workers"] == 1

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
    def broken_service():
        raise RuntimeError("secret internals at /srv/latentd")

    app.dependency_overrides[get_job_service] = broken_service
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


def test_openapi_and_readme_document_every_job_error_code(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    documented = schema["components"]["schemas"]["ErrorCode"]
    assert set(documented["enum"]) == {code.value for code in ErrorCode}
    readme = README.read_text()
    for code in ErrorCode:
        assert f"| `{code.value}` |" in readme, code
        assert f"``{code.value}``" in documented["description"], code


@pytest.mark.parametrize(
    ("settings_update", "setting"),
    [({"default_model": "nope"}, "LATENTD_DEFAULT_MODEL"),
     ({"models": {"x": {"source": "org/x", "max_widht": 9}}}, "LATENTD_MODELS"),
     ({"worker_models": ["nope"]}, "LATENTD_WORKER_MODELS")],
)
def test_a_bad_model_configuration_stops_the_startup_naming_the_setting(
    settings: Settings, settings_update: dict, setting: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings.model_copy(update=settings_update))
    with pytest.raises(InvalidConfiguration, match=setting), TestClient(app):
        pass
    assert setting in caplog.text
