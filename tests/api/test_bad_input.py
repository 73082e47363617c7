"""Bad input: a 4xx in the one error shape naming the field, with nothing stored or queued."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from shared.jobstore import JobStore
from shared.settings import Settings
from tests.api.conftest import queued_tasks
from tests.bad_inputs import BAD_INPUTS, OK


@pytest.mark.parametrize(("case", "body", "status", "field", "code"), BAD_INPUTS,
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_and_costs_nothing(
    client: TestClient, broker: redis.Redis, store: JobStore, settings: Settings,
    case: str, body: dict, status: int, field: str, code: str | None,
) -> None:
    response = client.post("/v1/jobs", json=body)

    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field"}
    assert error["field"] == field, error
    assert error["message"] and error["code"]
    if code is not None:
        assert error["code"] == code, error
    assert queued_tasks(broker) == {}
    assert store.list_jobs("public") == ([], None)
    assert not (Path(settings.images_dir) / "jobs").exists()


def test_private_webhook_is_accepted_when_allowed(client: TestClient, settings: Settings) -> None:
    settings.webhook_allow_private = True
    response = client.post("/v1/jobs", json={**OK, "webhook": {"url": "http://127.0.0.1:9/h"}})
    assert response.status_code == 202, response.text


def test_malformed_json_is_a_400(client: TestClient, broker: redis.Redis) -> None:
    response = client.post("/v1/jobs", content=b'{"prompt": ',
                           headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json" and error["field"] == "body"
    assert "at character 11" in error["message"]  # where parsing stopped
    assert queued_tasks(broker) == {}


def test_overlong_idempotency_key_is_refused(client: TestClient, broker: redis.Redis) -> None:
    response = client.post("/v1/jobs", json=OK, headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "Idempotency-Key"
    assert queued_tasks(broker) == {}


def test_body_over_the_limit_is_a_413_before_parsing(client: TestClient) -> None:
    from api.main import MAX_BODY_BYTES

    too_big = b"x" * (MAX_BODY_BYTES + 1)
    declared = client.post("/v1/jobs", content=too_big,
                           headers={"content-type": "application/json"})
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"

    streamed = client.post("/v1/jobs", content=iter([too_big[:1000], too_big[1000:]]),
                           headers={"content-type": "application/json"})
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"", 422, "missing_body"), (b"[1, 2]", 422, "invalid_request"),
    (b'"a cat"', 422, "invalid_request"), (b"{,}", 400, "invalid_json"),
])
def test_a_body_that_is_no_json_object_names_the_body(
    client: TestClient, broker: redis.Redis, body: bytes, status: int, code: str
) -> None:
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["field"] == "body"
    assert queued_tasks(broker) == {}
