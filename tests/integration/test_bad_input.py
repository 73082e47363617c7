"""Bad input over HTTP: a clear 4xx in the one error shape, nothing stored, nothing queued."""

from __future__ import annotations

import pytest
import redis

from tests.bad_inputs import BAD_INPUTS
from tests.integration.conftest import Service

# The service under test allows private webhook receivers (its tests run one on
# loopback), so the rows about refusing them are the in-process tests' alone.
OVER_HTTP = [row for row in BAD_INPUTS if row[4] != "invalid_webhook_url"]


def broker_backlog(client: redis.Redis) -> int:
    return sum(client.llen(key) for key in client.keys("gen.*") if client.type(key) == b"list")


@pytest.mark.parametrize(("case", "body", "status", "field", "code"), OVER_HTTP,
                         ids=[c[0] for c in OVER_HTTP])
def test_bad_input_is_refused_and_costs_nothing(
    service: Service, case: str, body: dict, status: int, field: str, code: str | None
) -> None:
    client = redis.Redis.from_url(service.redis_url)
    jobs_before = client.keys("latentd:job:*")
    backlog_before = broker_backlog(client)
    response = service.client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    error = response.json()["error"]
    assert error["code"] and error["message"] and error["field"] == field, error
    if code is not None:
        assert error["code"] == code, error
    assert client.keys("latentd:job:*") == jobs_before
    assert broker_backlog(client) == backlog_before


def test_malformed_json_and_unknown_job(service: Service) -> None:
    response = service.client.post(
        "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "body"
    missing = service.client.get("/v1/jobs/job_000000000000000000000000")
    assert missing.status_code == 404 and missing.json()["error"]["code"]
