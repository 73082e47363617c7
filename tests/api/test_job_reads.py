"""``GET /v1/jobs/{id}`` answers the public job as bytes kept per stored state."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from api.services import job_reads
from api.services.auth import Caller
from api.services.job_reads import PublicJobReads
from shared.jobstore import AsyncJobReader, JobStore
from shared.records import public_job
from shared.schemas import JOB_ID_PATTERN, Job
from tests.api.test_jobs import submit

pytestmark = pytest.mark.anyio


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the jobs whose public JSON was built (not taken from the cache)."""
    ids: list[str] = []
    build = job_reads.public_json

    def counting(record):  # type: ignore[no-untyped-def]
        ids.append(record.id)
        return build(record)

    monkeypatch.setattr(job_reads, "public_json", counting)
    return ids


@pytest.fixture
async def reader(redis_url: str) -> AsyncIterator[AsyncJobReader]:
    """A reader on this test's loop (the app's own client lives on the TestClient's)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield AsyncJobReader(client)
    await client.aclose()


def test_the_read_is_the_public_job_as_the_store_holds_it(
    client: TestClient, store: JobStore
) -> None:
    job_id = submit(client)["id"]
    response = client.get(f"/v1/jobs/{job_id}")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    record = store.get(job_id)
    assert record is not None
    assert Job.model_validate_json(response.content) == public_job(record)
    assert response.json() == public_job(record).model_dump(mode="json")


def test_an_unchanged_job_is_built_once_and_a_change_is_seen_at_once(
    client: TestClient, built: list[str]
) -> None:
    job_id = submit(client)["id"]
    first, again = client.get(f"/v1/jobs/{job_id}"), client.get(f"/v1/jobs/{job_id}")
    assert first.content == again.content and built == [job_id]

    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "canceled"
    assert built == [job_id, job_id]


def test_a_queue_position_that_moves_is_a_new_state(client: TestClient) -> None:
    first, second = submit(client)["id"], submit(client)["id"]
    assert client.get(f"/v1/jobs/{second}").json()["queue_position"] == 1
    client.post(f"/v1/jobs/{first}/cancel")
    assert client.get(f"/v1/jobs/{second}").json()["queue_position"] == 0


async def test_a_cached_job_is_still_hidden_from_another_owner(
    client: TestClient, reader: AsyncJobReader, built: list[str]
) -> None:
    job_id = submit(client)["id"]
    reads = PublicJobReads(reader)
    owner = Caller("public")
    assert Job.model_validate_json(await reads.read(job_id, owner)).id == job_id

    with pytest.raises(job_reads.NotFound):
        await reads.read(job_id, Caller("key_other"))
    assert Job.model_validate_json(await reads.read(job_id, Caller("key_admin", admin=True)))
    assert built == [job_id]  # both answered from the one built copy


async def test_only_the_latest_replies_are_kept(client: TestClient, reader: AsyncJobReader,
                                                built: list[str]) -> None:
    ids = [submit(client)["id"] for _ in range(3)]
    reads = PublicJobReads(reader, cached_replies=2)
    for job_id in ids:
        await reads.read(job_id, Caller("public"))
    await reads.read(ids[2], Caller("public"))  # kept
    await reads.read(ids[0], Caller("public"))  # pushed out by the third: built again
    assert built == [*ids, ids[0]]


def test_a_read_right_after_redis_dropped_the_connections_is_answered(
    client: TestClient, redis_client: redis.Redis
) -> None:
    job_id = submit(client)["id"]
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200  # the pool keeps connections
    # What a Redis restart does to every connection the API's pools hold.
    killed = redis_client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    for _ in range(3):
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        assert response.json()["id"] == job_id


def test_an_id_that_is_not_a_job_id_is_a_422_naming_it(client: TestClient) -> None:
    response = client.get("/v1/jobs/job_nothex")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "job_id"
    assert "^job_[0-9a-f]{24}$" in response.json()["error"]["message"]


def test_the_schema_documents_the_parameters_the_route_reads_itself(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}"]["get"]
    by_name = {parameter["name"]: parameter for parameter in operation["parameters"]}
    assert by_name["job_id"]["in"] == "path" and by_name["job_id"]["required"] is True
    assert by_name["job_id"]["schema"]["pattern"] == JOB_ID_PATTERN
    assert by_name["prefer"]["in"] == "header" and "wait=N" in by_name["prefer"]["description"]
    cancel = client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/cancel"]["post"]
    assert cancel["parameters"][0]["schema"]["pattern"] == by_name["job_id"]["schema"]["pattern"]


def test_prefer_wait_is_read_from_the_header(client: TestClient) -> None:
    job_id = submit(client)["id"]
    response = client.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=1"})
    assert response.status_code == 202  # nothing runs the job here: not finished after 1 s
    assert response.headers["Preference-Applied"] == "wait=1"
