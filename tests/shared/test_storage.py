"""shared.storage: the local backend writes atomically and never leaves its root."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.storage import LocalStorage, image_key, input_key, job_prefix


def test_put_get_and_delete_a_job_prefix(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put(image_key("job_1", 0, "png"), b"a", "image/png")
    storage.put(input_key("job_1", "init"), b"b", "image/png")
    storage.put(image_key("job_2", 0, "png"), b"c", "image/png")
    assert storage.get(image_key("job_1", 0, "png")) == b"a"
    storage.delete_prefix(job_prefix("job_1"))
    with pytest.raises(KeyError):
        storage.get(input_key("job_1", "init"))
    assert storage.get(image_key("job_2", 0, "png")) == b"c"
    assert not list(tmp_path.rglob(".tmp-*"))  # no half-written files left behind


def test_rewriting_a_key_replaces_its_bytes(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("jobs/x/images/0.png", b"first", "image/png")
    storage.put("jobs/x/images/0.png", b"second", "image/png")
    assert storage.get("jobs/x/images/0.png") == b"second"


@pytest.mark.parametrize("key", ["../outside", "jobs/../../outside", "/etc/passwd", "", "."])
def test_a_key_escaping_the_root_is_refused(tmp_path: Path, key: str) -> None:
    storage = LocalStorage(tmp_path / "root")
    for operation in (lambda: storage.put(key, b"x", "text/plain"), lambda: storage.get(key),
                      lambda: storage.delete_prefix(key)):
        with pytest.raises(ValueError, match="escapes the data directory"):
            operation()
    assert not (tmp_path / "outside").exists()
