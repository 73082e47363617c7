"""Where images live. The local backend writes under ``LATENTD_DATA_DIR``; an object-store
backend implements the same interface so workers on many hosts can share outputs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from shared.settings import Settings


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes:
        """The object's bytes; raises ``KeyError`` when absent."""
        ...

    def delete_prefix(self, prefix: str) -> None: ...


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


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}"


def image_key(job_id: str, index: int, extension: str) -> str:
    return f"{job_prefix(job_id)}/images/{index}.{extension}"


def input_key(job_id: str, name: str) -> str:
    return f"{job_prefix(job_id)}/inputs/{name}.png"


def get_storage(settings: Settings) -> Storage:
    return LocalStorage(settings.images_dir)
