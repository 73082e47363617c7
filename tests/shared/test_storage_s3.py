"""shared.storage_s3 against a real S3 endpoint over HTTP (moto's server): keys under the
prefix, batch deletes page by page, presigned URLs; and which backend LATENTD_STORAGE_URL
picks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from shared.settings import Settings
from shared.storage import LocalStorage, get_storage, image_key, input_key, job_prefix
from shared.storage_s3 import S3Storage
from tests.s3_server import S3Endpoint, running_s3


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with running_s3() as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> S3Endpoint:
    """The endpoint and credentials in the environment, where boto3 reads them."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


@pytest.fixture
def bucket(s3: S3Endpoint) -> str:
    return s3.create_bucket()


@pytest.fixture
def storage(s3_env: S3Endpoint, bucket: str) -> S3Storage:
    return S3Storage.from_url(f"s3://{bucket}/latentd/images")


def test_put_get_and_delete_a_job_prefix_under_the_url_prefix(
    s3: S3Endpoint, bucket: str, storage: S3Storage
) -> None:
    storage.put(image_key("job_1", 0, "png"), b"a", "image/png")
    storage.put(input_key("job_1", "init"), b"b", "image/png")
    storage.put(image_key("job_2", 0, "webp"), b"c", "image/webp")
    assert storage.get(image_key("job_1", 0, "png")) == b"a"
    assert s3.keys(bucket) == ["latentd/images/jobs/job_1/images/0.png",
                               "latentd/images/jobs/job_1/inputs/init.png",
                               "latentd/images/jobs/job_2/images/0.webp"]
    head = s3.client().head_object(Bucket=bucket, Key="latentd/images/jobs/job_2/images/0.webp")
    assert head["ContentType"] == "image/webp"

    storage.delete_prefix(job_prefix("job_1"))
    with pytest.raises(KeyError):
        storage.get(input_key("job_1", "init"))
    assert s3.keys(bucket) == ["latentd/images/jobs/job_2/images/0.webp"]


def test_a_missing_key_is_a_key_error(storage: S3Storage) -> None:
    with pytest.raises(KeyError):
        storage.get("jobs/job_9/images/0.png")
    storage.delete_prefix(job_prefix("job_9"))  # nothing there: nothing to do


def test_rewriting_a_key_replaces_its_bytes(storage: S3Storage) -> None:
    storage.put("jobs/x/images/0.png", b"first", "image/png")
    storage.put("jobs/x/images/0.png", b"second", "image/png")
    assert storage.get("jobs/x/images/0.png") == b"second"


def test_delete_prefix_deletes_page_by_page_and_only_below_the_prefix(
    s3: S3Endpoint, bucket: str, storage: S3Storage
) -> None:
    storage.page_size = 3
    for index in range(10):
        storage.put(image_key("job_1", index, "png"), b"x", "image/png")
    storage.put(image_key("job_10", 0, "png"), b"neighbour", "image/png")  # job_1 is its prefix
    other = S3Storage(storage.client, bucket, "another/prefix")
    other.put(image_key("job_1", 0, "png"), b"elsewhere", "image/png")
    batches: list[str] = []  # one entry per DeleteObjects request sent
    storage.client.meta.events.register("before-call.s3.DeleteObjects",
                                        lambda **_: batches.append("sent"))

    storage.delete_prefix(job_prefix("job_1") + "/")

    assert len(batches) == 4  # 10 keys (and job_10's) listed 3 at a time
    assert s3.keys(bucket) == ["another/prefix/jobs/job_1/images/0.png",
                               "latentd/images/jobs/job_10/images/0.png"]


@pytest.mark.parametrize("key", ["../outside", "jobs/../../outside", "/etc/passwd", "", ".",
                                 "jobs//x"])
def test_a_key_that_is_not_a_plain_relative_path_is_refused(
    s3: S3Endpoint, bucket: str, storage: S3Storage, key: str
) -> None:
    for operation in (lambda: storage.put(key, b"x", "text/plain"), lambda: storage.get(key),
                      lambda: storage.delete_prefix(key), lambda: storage.url_for(key, 60)):
        with pytest.raises(ValueError, match="not a plain relative path"):
            operation()
    assert s3.keys(bucket) == []


def test_a_presigned_url_serves_the_object_for_its_lifetime(storage: S3Storage) -> None:
    storage.put("jobs/x/images/0.png", b"\x89PNG...", "image/png")
    url = storage.url_for("jobs/x/images/0.png", 120)
    assert url is not None
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == ["120"]
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"\x89PNG..." and response.headers["content-type"] == "image/png"


def test_presigned_urls_can_name_a_public_endpoint(s3_env: S3Endpoint, bucket: str) -> None:
    storage = S3Storage.from_url(f"s3://{bucket}", public_endpoint_url="https://files.example.com")
    storage.put("jobs/x/images/0.png", b"x", "image/png")  # the service's own endpoint
    url = storage.url_for("jobs/x/images/0.png", 60)
    assert url is not None and url.startswith(f"https://files.example.com/{bucket}/jobs/x/")


def test_the_local_directory_has_no_url(tmp_path: Path) -> None:
    assert LocalStorage(tmp_path).url_for("jobs/x/images/0.png", 60) is None


# --- LATENTD_STORAGE_URL picks the backend ------------------------------------------------


def test_an_s3_url_gives_the_s3_backend_with_boto3s_own_configuration(
    s3_env: S3Endpoint, bucket: str
) -> None:
    storage = get_storage(Settings(storage_url=f"s3://{bucket}/a/b/", image_delivery="redirect"))
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix) == (bucket, "a/b")
    storage.put("jobs/x/images/0.png", b"x", "image/png")  # AWS_ENDPOINT_URL: the moto server
    assert s3_env.keys(bucket) == ["a/b/jobs/x/images/0.png"]


@pytest.mark.parametrize("url", [None, "", "file://"])
def test_no_url_is_the_local_backend_under_the_data_dir(tmp_path: Path, url: str | None) -> None:
    storage = get_storage(Settings(data_dir=tmp_path, storage_url=url))
    assert isinstance(storage, LocalStorage) and storage.root == (tmp_path / "images").resolve()


def test_a_file_url_is_a_local_directory(tmp_path: Path) -> None:
    storage = get_storage(Settings(storage_url=f"file://{tmp_path}/outputs"))
    assert isinstance(storage, LocalStorage) and storage.root == (tmp_path / "outputs").resolve()


@pytest.mark.parametrize(("url", "message"), [
    ("gs://bucket/images", "use s3://<bucket>/<prefix> or file:///<directory>"),
    ("s3://Bad_Bucket/images", "needs a valid bucket name"),
    ("s3:///images", "needs a valid bucket name"),
    ("s3://bucket/a/../b", "the prefix must be a plain path"),
    ("file://host/srv/images", "file:///absolute/path"),
])
def test_a_bad_storage_url_is_refused_naming_the_variable(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"LATENTD_STORAGE_URL .*{message}"):
        Settings(storage_url=url)


def test_redirect_delivery_needs_an_object_store() -> None:
    with pytest.raises(ValueError, match="LATENTD_IMAGE_DELIVERY=redirect needs an s3://"):
        Settings(image_delivery="redirect")
    with pytest.raises(ValueError, match="image_delivery"):
        Settings(image_delivery="proxy")
    with pytest.raises(ValueError, match="LATENTD_S3_PUBLIC_ENDPOINT_URL must be an http"):
        Settings(storage_url="s3://bucket", s3_public_endpoint_url="files.example.com")
