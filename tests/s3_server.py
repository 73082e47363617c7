"""A real S3 endpoint for the tests: moto's server, over HTTP on a free port, in this
process (``ThreadedMotoServer``), rather than mocked boto3 calls.

The storage backend finds it as it finds MinIO or AWS, through the environment boto3 reads
(``AWS_ENDPOINT_URL`` and the credentials of ``S3Endpoint.env``), so the API and worker
processes the integration tests start use it too.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Endpoint:
    url: str

    def env(self) -> dict[str, str]:
        """What a process needs to reach this endpoint, as boto3 reads it."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            # A developer's ~/.aws must not change what the tests talk to.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self) -> Any:
        """A plain boto3 client of the endpoint, to look at the bucket from outside."""
        return boto3.session.Session().client(
            "s3", endpoint_url=self.url, region_name=REGION,
            aws_access_key_id="testing", aws_secret_access_key="testing")

    def create_bucket(self) -> str:
        """A new empty bucket (one per test keeps tests apart); its name."""
        name = f"latentd-test-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        """Every key in ``bucket``, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@contextmanager
def running_s3() -> Iterator[S3Endpoint]:
    """moto's S3 server on 127.0.0.1 and a free port, stopped on exit."""
    # werkzeug logs every request at INFO, to stderr: thousands of lines per test run.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Endpoint(f"http://{host}:{port}")
    finally:
        server.stop()
