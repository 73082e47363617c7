"""Images in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, ...):
``LATENTD_STORAGE_URL=s3://<bucket>/<prefix>``.

Every API and worker process, on every host, reads and writes the same bucket, so GPU
hosts need no shared filesystem. boto3 finds the endpoint and the credentials itself
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or an instance
role, ``AWS_DEFAULT_REGION``). A PUT is atomic in S3: a reader gets the old object or
the new one, never part of one, so a re-run of a job overwrites its keys as safely as the
local backend's write-then-rename.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

_CLIENT_CONFIG = Config(
    # Presigned URLs in SigV4: AWS refuses SigV2 in most regions, and botocore still
    # presigns in SigV2 unless told otherwise.
    signature_version="s3v4",
    # Submits and image reads wait on these inside a request; botocore's 60 s are too long.
    connect_timeout=5,
    read_timeout=30,
    retries={"mode": "standard", "max_attempts": 3},
    # The API serves images from a threadpool: more than botocore's 10 at once.
    max_pool_connections=32,
)
_MISSING = {"NoSuchKey", "404", "NotFound"}


class S3Storage:
    """Objects under ``prefix`` in ``bucket``; keys are relative POSIX paths below it.

    ``presign_client`` signs the URLs handed to clients (another endpoint than the one the
    service uses, when clients reach the store at another address); default ``client``.
    """

    # Keys per listing page, and so per batch delete: S3's maximum for both.
    page_size = 1000

    def __init__(self, client: Any, bucket: str, prefix: str = "",
                 presign_client: Any | None = None):
        self.client = client
        self.presign_client = presign_client or client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    @classmethod
    def from_url(cls, url: str, public_endpoint_url: str | None = None) -> S3Storage:
        """The store ``s3://<bucket>/<prefix>`` names, with boto3's own configuration."""
        parts = urlsplit(url)
        # One session per client: boto3's default session is not safe to share across threads.
        client = boto3.session.Session().client("s3", config=_CLIENT_CONFIG)
        presign = None
        if public_endpoint_url:
            presign = boto3.session.Session().client(
                "s3", endpoint_url=public_endpoint_url, config=_CLIENT_CONFIG)
        return cls(client, parts.netloc, parts.path, presign)

    def _object_key(self, key: str) -> str:
        # The local backend's rule, for the same keys: a plain relative path, nothing that
        # could name an object outside the prefix.
        if not key or key.startswith("/") or {"", ".", ".."} & set(key.split("/")):
            raise ValueError(f"storage key is not a plain relative path: {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._object_key(key), Body=data,
                               ContentType=content_type)

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise KeyError(key) from None
            raise
        with response["Body"] as body:
            return body.read()

    def delete_prefix(self, prefix: str) -> None:
        """Delete the object ``prefix`` and every object below ``prefix/``, as the local
        backend deletes a file or a directory (``jobs/job_1`` leaves ``jobs/job_10`` be)."""
        base = self._object_key(prefix.rstrip("/"))
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base, PaginationConfig={"PageSize": self.page_size})
        for page in pages:
            keys = [item["Key"] for item in page.get("Contents", [])
                    if item["Key"] == base or item["Key"].startswith(base + "/")]
            if keys:
                self._delete(keys)

    def _delete(self, keys: list[str]) -> None:
        response = self.client.delete_objects(Bucket=self.bucket, Delete={
            "Objects": [{"Key": key} for key in keys], "Quiet": True})
        if errors := response.get("Errors"):
            first = errors[0]
            raise RuntimeError(f"could not delete {len(errors)} object(s) from {self.bucket}, "
                               f"e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message')}")

    def url_for(self, key: str, expires_in_seconds: int) -> str | None:
        """A presigned GET URL of the object (computed locally: no request is made)."""
        return self.presign_client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._object_key(key)},
            ExpiresIn=expires_in_seconds)
