"""The model cache on a GPU: an evicted model's memory goes back to the device (skipped
where CUDA is absent)."""

from __future__ import annotations

import pytest
import torch

from shared.model_registry import BUILTIN_MODELS, TINY_RANDOM
from shared.settings import Settings
from worker.model_cache import ModelCache, model_bytes
from worker.pipelines import LoadedModel, load_pipeline

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SETTINGS = Settings(device="cuda", default_model=TINY_RANDOM)


def load(name: str) -> LoadedModel:
    return load_pipeline(BUILTIN_MODELS[TINY_RANDOM].model_copy(update={"name": name}), SETTINGS)


def test_eviction_gives_the_gpu_memory_back() -> None:
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    cache = ModelCache(["a", "b"], load, budget_bytes=1)  # each model over it: one at a time
    cache.preload()
    held = torch.cuda.memory_allocated() - before
    size = cache.size_of("a")
    assert size is not None and size == model_bytes(cache["a"])
    # Half precision on CUDA: what torch allocated is the weights the cache measured.
    assert size <= held < size + 2**20
    with cache.use("b"):
        assert cache.loaded == ["b"]
        # a's weights were freed before b's were allocated: one model's worth, not two.
        assert torch.cuda.memory_allocated() - before < held + 2**20
    with cache.use("a"):
        assert torch.cuda.memory_allocated() - before < held + 2**20
