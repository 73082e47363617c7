"""GET /v1/jobs/{id}/images/{n} with images in an S3 bucket (moto's server over HTTP):
streamed through the API, or a 307 to a presigned URL after the same owner check."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from shared.api_keys import ApiKeyStore
from shared.jobstore import JobStore
from shared.records import OutputImage
from shared.schemas import Metrics, OutputFormat
from shared.settings import Settings
from shared.storage import Storage, image_key, poster_key
from tests.s3_server import S3Endpoint, running_s3

PREFIX = "latentd"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with running_s3() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3: S3Endpoint) -> str:
    return s3.create_bucket()


@pytest.fixture
def delivery() -> str:
    return "stream"


@pytest.fixture
def settings(redis_url: str, tmp_path: Path, s3: S3Endpoint, bucket: str, delivery: str,
             monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The API tests' settings, with images in ``bucket`` and the delivery under test."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return Settings(redis_url=redis_url, data_dir=tmp_path / "data", max_wait_seconds=5,
                    default_model="tiny-random", storage_url=f"s3://{bucket}/{PREFIX}",
                    image_delivery=delivery, image_url_expiry_seconds=90)


def finished_job(client: TestClient, store: JobStore, storage: Storage,
                 headers: dict[str, str] | None = None) -> tuple[str, list[bytes]]:
    """A job submitted over the API and finished by hand as a worker would: 2 PNGs stored."""
    response = client.post("/v1/jobs", json={"prompt": "a cat", "num_images": 2},
                           headers=headers or {})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    store.mark_running(job_id)
    images, stored = [], []
    for index in range(2):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (index, 0, 0)).save(buffer, format="PNG")
        storage.put(image_key(job_id, index, "png"), buffer.getvalue(), "image/png")
        stored.append(buffer.getvalue())
        images.append(OutputImage(index=index, seed=index, width=64, height=64,
                                  format=OutputFormat.PNG))
    store.mark_succeeded(job_id, images, Metrics(total_seconds=0.1))
    return job_id, stored


@pytest.mark.parametrize("delivery", ["stream", "redirect"])
def test_each_delivery_serves_the_image_the_worker_stored(
    client: TestClient, store: JobStore, storage: Storage, s3: S3Endpoint, bucket: str,
    delivery: str,
) -> None:
    job_id, stored = finished_job(client, store, storage)
    assert s3.keys(bucket) == [f"{PREFIX}/jobs/{job_id}/images/0.png",
                               f"{PREFIX}/jobs/{job_id}/images/1.png"]

    response = client.get(f"/v1/jobs/{job_id}/images/1", follow_redirects=False)
    if delivery == "stream":
        assert response.status_code == 200
        assert response.headers["cache-control"] == "private, max-age=86400, immutable"
        image = response
    else:
        assert response.status_code == 307
        # The presigned URL expires: neither the client nor a proxy may keep the redirect.
        assert response.headers["cache-control"] == "no-store"
        location = response.headers["location"]
        assert location.startswith(f"{s3.url}/{bucket}/{PREFIX}/jobs/{job_id}/images/1.png?")
        assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["90"]
        image = httpx.get(location)  # straight from the bucket, no API key needed
        assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content == stored[1]


@pytest.mark.parametrize("delivery", ["redirect"])
def test_a_redirect_comes_only_after_the_owner_check(
    settings: Settings, redis_url: str, delivery: str
) -> None:
    keys = ApiKeyStore(redis.Redis.from_url(redis_url, decode_responses=True))
    alice, bob = ({"Authorization": f"Bearer {keys.create(name)[1]}"} for name in ("a", "b"))
    with TestClient(create_app(settings)) as client:
        state = client.app.state.latentd
        job_id, _ = finished_job(client, state.store, state.storage, alice)
        assert client.get(f"/v1/jobs/{job_id}/images/0", headers=alice,
                          follow_redirects=False).status_code == 307

        for path in (f"/v1/jobs/{job_id}/images/0", f"/v1/jobs/{job_id}/images/5"):
            for headers in (bob, {}):
                response = client.get(path, headers=headers, follow_redirects=False)
                assert response.status_code in (401, 404), response.text
                assert "location" not in response.headers
        assert client.get(f"/v1/jobs/{job_id}/images/5", headers=alice,
                          follow_redirects=False).json()["error"]["code"] == "image_not_found"


def test_deleting_a_job_deletes_its_objects(
    client: TestClient, store: JobStore, storage: Storage, s3: S3Endpoint, bucket: str
) -> None:
    job_id, _ = finished_job(client, store, storage)
    other_id, _ = finished_job(client, store, storage)
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}/images/0").status_code == 404
    assert s3.keys(bucket) == [f"{PREFIX}/jobs/{other_id}/images/0.png",
                               f"{PREFIX}/jobs/{other_id}/images/1.png"]


def test_a_streamed_image_gone_from_the_bucket_is_a_404(
    client: TestClient, store: JobStore, storage: Storage
) -> None:
    job_id, _ = finished_job(client, store, storage)
    storage.delete_prefix(f"jobs/{job_id}/images/0.png")
    response = client.get(f"/v1/jobs/{job_id}/images/0")
    assert response.status_code == 404 and response.json()["error"]["code"] == "image_not_found"
    assert client.get(f"/v1/jobs/{job_id}/images/1").status_code == 200


@pytest.mark.parametrize("delivery", ["stream", "redirect"])
def test_a_video_and_its_poster_are_delivered_with_their_content_types(
    client: TestClient, store: JobStore, storage: Storage, s3: S3Endpoint, bucket: str,
    delivery: str,
) -> None:
    response = client.post("/v1/jobs", json={"prompt": "a cat"})
    job_id = response.json()["id"]
    store.mark_running(job_id)
    # What worker.video.store_video writes: the video under the image key, a PNG beside it.
    video, poster = b"\x00\x00\x00\x18ftypisom-a-video", b"\x89PNG-a-poster"
    storage.put(image_key(job_id, 0, "mp4"), video, "video/mp4")
    storage.put(poster_key(job_id, 0), poster, "image/png")
    store.mark_succeeded(job_id, [OutputImage(index=0, seed=1, width=64, height=64,
                                              format=OutputFormat.MP4, frames=4, fps=8)],
                         Metrics(total_seconds=0.1))
    (info,) = client.get(f"/v1/jobs/{job_id}").json()["images"]
    assert (info["content_type"], info["frames"], info["fps"]) == ("video/mp4", 4, 8)
    assert info["poster_url"] == f"/v1/jobs/{job_id}/images/0/poster"
    for path, data, content_type in ((info["url"], video, "video/mp4"),
                                     (info["poster_url"], poster, "image/png")):
        response = client.get(path, follow_redirects=False)
        if delivery == "redirect":
            assert response.status_code == 307
            response = httpx.get(response.headers["location"])
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"] == content_type and response.content == data
    # An image has no poster.
    image_job, _ = finished_job(client, store, storage)
    missing = client.get(f"/v1/jobs/{image_job}/images/0/poster")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "image_not_found"
