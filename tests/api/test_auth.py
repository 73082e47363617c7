"""API keys, isolation between keys, request rate and queue caps, over the app."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import InvalidConfiguration, create_app
from shared.api_keys import ApiKeyStore
from shared.settings import Settings
from tests.api.conftest import message_job_id, queued_tasks

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def keys(redis_url: str) -> ApiKeyStore:
    return ApiKeyStore(redis.Redis.from_url(redis_url, decode_responses=True))


@pytest.fixture
def secured(settings: Settings, keys: ApiKeyStore) -> Iterator[tuple[TestClient, dict]]:
    """The app with three keys in Redis: alice, bob and an admin."""
    secrets = {name: keys.create(name, admin=name == "ops")[1] for name in ("alice", "bob", "ops")}
    with TestClient(create_app(settings)) as client:
        yield client, {name: {"Authorization": f"Bearer {s}"} for name, s in secrets.items()}


def test_with_keys_a_request_without_one_or_with_a_wrong_one_is_401(secured) -> None:
    client, _ = secured
    missing = client.get("/v1/jobs")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = client.get("/v1/jobs", headers={"Authorization": "Bearer ltd_not-a-key"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert client.post("/v1/jobs", json={"prompt": "x"}).status_code == 401
    assert client.get("/healthz").status_code == 200  # probes need no key


def test_a_key_sees_only_its_own_jobs_and_an_admin_sees_all(secured) -> None:
    client, headers = secured
    job = client.post("/v1/jobs", json={"prompt": "mine"}, headers=headers["alice"]).json()
    path = f"/v1/jobs/{job['id']}"
    bob = headers["bob"]
    for method, url in [("GET", path), ("GET", path + "/images/0"), ("GET", path + "/events"),
                        ("POST", path + "/cancel"), ("DELETE", path)]:
        response = client.request(method, url, headers=bob)
        assert response.status_code == 404, (method, url, response.text)
        assert response.json()["error"]["code"] == "job_not_found"
    assert client.get("/v1/jobs", headers=bob).json()["jobs"] == []
    assert [j["id"] for j in client.get("/v1/jobs", headers=headers["alice"]).json()["jobs"]] == [
        job["id"]]
    # The X-API-Key header works as well as Authorization.
    alice_secret = headers["alice"]["Authorization"].removeprefix("Bearer ")
    assert client.get(path, headers={"X-API-Key": alice_secret}).status_code == 200

    assert client.get(path, headers=headers["ops"]).status_code == 200
    owner = client.get("/v1/jobs", headers=headers["alice"]).json()["jobs"][0]
    assert "owner" not in owner
    alice_id = next(k.id for k in ApiKeyStore(client.app.state.latentd.redis).all()
                    if k.name == "alice")
    listed = client.get("/v1/jobs", params={"owner": alice_id}, headers=headers["ops"]).json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    refused = client.get("/v1/jobs", params={"owner": alice_id}, headers=bob)
    assert refused.status_code == 403 and refused.json()["error"]["field"] == "owner"


def test_reading_a_job_without_a_valid_key_says_nothing_of_the_job(secured) -> None:
    # The read fetches the job while it looks the key up: the answer must still be the
    # key's refusal, the same whether the job exists or not.
    client, headers = secured
    job = client.post("/v1/jobs", json={"prompt": "mine"}, headers=headers["alice"]).json()
    for path in (f"/v1/jobs/{job['id']}", "/v1/jobs/job_" + "0" * 24):
        for wrong in ({}, {"Authorization": "Bearer ltd_not-a-key"}):
            response = client.get(path, headers=wrong)
            assert response.status_code == 401, (path, wrong, response.text)
            assert set(response.json()) == {"error"} and job["id"] not in response.text


def test_a_revoked_key_stops_working(secured, keys: ApiKeyStore) -> None:
    client, headers = secured
    assert client.get("/v1/jobs", headers=headers["bob"]).status_code == 200
    bob = next(k for k in keys.all() if k.name == "bob")
    assert keys.revoke(bob.id)
    assert client.get("/v1/jobs", headers=headers["bob"]).status_code == 401


def test_the_api_refuses_to_listen_beyond_loopback_without_keys(settings: Settings) -> None:
    public = settings.model_copy(update={"host": "0.0.0.0"})
    with pytest.raises(InvalidConfiguration, match="LATENTD_HOST 0.0.0.0"), TestClient(
        create_app(public)
    ):
        pass
    admin = public.model_copy(update={"admin_key": "ltd_" + "a" * 30})
    with TestClient(create_app(admin)) as client:
        assert client.get("/v1/jobs").status_code == 401
        ok = client.get("/v1/jobs", headers={"Authorization": "Bearer ltd_" + "a" * 30})
        assert ok.status_code == 200


def test_keys_from_a_file(settings: Settings, tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# name secret [admin]\napp1 ltd_app1-secret-0123456789\n")
    configured = settings.model_copy(update={"api_keys_file": key_file})
    with TestClient(create_app(configured)) as client:
        assert client.get("/v1/jobs").status_code == 401
        headers = {"X-API-Key": "ltd_app1-secret-0123456789"}
        assert client.post("/v1/jobs", json={"prompt": "x"}, headers=headers).status_code == 202
    key_file.write_text("app1 short\n")
    with pytest.raises(InvalidConfiguration, match="LATENTD_API_KEYS_FILE.*:1:"), TestClient(
        create_app(configured)
    ):
        pass


def test_the_request_rate_is_limited_per_key(settings: Settings, keys: ApiKeyStore) -> None:
    limited = settings.model_copy(update={"rate_limit": "3/minute"})
    alice, bob = (keys.create(name)[1] for name in ("alice", "bob"))
    with TestClient(create_app(limited)) as client:
        for _ in range(3):
            assert client.get("/v1/jobs", headers={"X-API-Key": alice}).status_code == 200
        over = client.get("/v1/jobs", headers={"X-API-Key": alice})
        assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limited"
        assert 0 < int(over.headers["Retry-After"]) <= 60
        assert client.get("/v1/jobs", headers={"X-API-Key": bob}).status_code == 200


def test_queued_jobs_are_capped_per_key_and_per_model(settings: Settings,
                                                      keys: ApiKeyStore) -> None:
    capped = settings.model_copy(update={"max_queued_jobs_per_key": 2, "max_queued_jobs": 3})
    alice, bob = (keys.create(name)[1] for name in ("alice", "bob"))
    with TestClient(create_app(capped)) as client:
        def submit(secret: str):
            return client.post("/v1/jobs", json={"prompt": "x"}, headers={"X-API-Key": secret})

        assert [submit(alice).status_code for _ in range(2)] == [202, 202]
        over = submit(alice)
        assert over.status_code == 429 and over.json()["error"]["code"] == "too_many_queued_jobs"
        assert submit(bob).status_code == 202  # three queued now: the model's cap
        full = submit(bob)
        assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
        assert full.headers["Retry-After"]
        # A job leaving the queue makes room again.
        first = client.get("/v1/jobs", headers={"X-API-Key": alice}).json()["jobs"][-1]
        client.post(f"/v1/jobs/{first['id']}/cancel", headers={"X-API-Key": alice})
        assert submit(alice).status_code == 202


def test_the_cli_creates_lists_and_revokes_keys(redis_url: str, settings: Settings) -> None:
    env = {**os.environ, "LATENTD_REDIS_URL": redis_url}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    created = cli("keys", "create", "--name", "app1")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("ltd_") and "shown only now" in created.stderr
    assert cli("keys", "create", "--name", "ops", "--admin").returncode == 0
    first, second = cli("keys", "list").stdout.splitlines()
    key_id, name, role, _ = first.split("\t")
    assert (name, role) == ("app1", "-") and secret not in first
    assert second.split("\t")[1:3] == ["ops", "admin"]
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs", headers={"X-API-Key": secret}).status_code == 200
        assert cli("keys", "revoke", key_id).returncode == 0
        assert client.get("/v1/jobs", headers={"X-API-Key": secret}).status_code == 401
    assert cli("keys", "revoke", key_id).returncode == 1


def test_a_key_flooding_the_queue_does_not_starve_another_keys_job(
    settings: Settings, keys: ApiKeyStore, broker: redis.Redis
) -> None:
    flood, single = (keys.create(name)[1] for name in ("a", "b"))
    with TestClient(create_app(settings)) as client:
        first = None
        for n in range(50):
            response = client.post("/v1/jobs", json={"prompt": f"a {n}"},
                                   headers={"X-API-Key": flood})
            assert response.status_code == 202
            first = first or response.json()["id"]
        late = client.post("/v1/jobs", json={"prompt": "b"}, headers={"X-API-Key": single})
        # Behind A's first job only: B's job starts within the next two jobs.
        assert late.json()["queue_position"] == 1
    # The broker hands them out in that order: the first priority list served holds
    # exactly A's first job and B's.
    front = queued_tasks(broker)["gen.tiny-random:3"]
    assert {message_job_id(m) for m in front} == {first, late.json()["id"]}
