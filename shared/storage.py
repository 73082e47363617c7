"""Where images live. The local backend writes under ``LATENTD_DATA_DIR``; the S3 backend
(``shared.storage_s3``, ``LATENTD_STORAGE_URL=s3://...``) implements the same interface so
workers on many hosts share outputs without a shared filesystem.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from shared.settings import Settings
from shared.storage_s3 import S3Storage


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes:
        """The object's bytes; raises ``KeyError`` when absent."""
        ...

    def delete_prefix(self, prefix: str) -> None: ...

    def url_for(self, key: str, expires_in_seconds: int) -> str | None:
        """A URL anyone holding it may GET the object from for ``expires_in_seconds``;
        ``None`` when the backend has none (a local directory)."""
        ...


class LocalStorage:
    """Files under a root directory; keys are relative POSIX paths."""

    def __init__(self, root: Path):
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"storage key escapes the data directory: {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees half an image, and a re-run of the
        # same job overwrites the same key atomically.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def url_for(self, key: str, expires_in_seconds: int) -> str | None:
        return None


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}"


def image_key(job_id: str, index: int, extension: str) -> str:
    return f"{job_prefix(job_id)}/images/{index}.{extension}"


def poster_key(job_id: str, index: int) -> str:
    """The poster frame of output video ``index`` (a PNG beside the video)."""
    return f"{job_prefix(job_id)}/images/{index}.poster.png"


POSTER_CONTENT_TYPE = "image/png"


def input_key(job_id: str, name: str) -> str:
    return f"{job_prefix(job_id)}/inputs/{name}.png"


def get_storage(settings: Settings) -> Storage:
    """The backend ``LATENTD_STORAGE_URL`` names (checked by ``Settings``): unset or
    ``file://`` = ``LATENTD_DATA_DIR/images``, ``file:///dir``, or ``s3://bucket/prefix``."""
    url = settings.storage_url
    if url and settings.storage_scheme == "s3":
        return S3Storage.from_url(url, public_endpoint_url=settings.s3_public_endpoint_url)
    path = urlsplit(url).path if url else ""
    return LocalStorage(Path(path) if path else settings.images_dir)
