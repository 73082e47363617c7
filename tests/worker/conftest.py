"""Generation-worker fixtures: the tiny-random model, loaded once for the whole session."""

from __future__ import annotations

import pytest

from shared.model_registry import BUILTIN_MODELS, TINY_RANDOM
from shared.settings import Settings


@pytest.fixture(scope="session")
def tiny_model():
    from worker.pipelines import load_pipeline

    # One thread: the tiny model is all per-op overhead, and on a shared 2-core box a second
    # thread mostly waits (several times slower under load).
    return load_pipeline(BUILTIN_MODELS[TINY_RANDOM], Settings(torch_threads=1))


@pytest.fixture(scope="session")
def engine(tiny_model):
    from worker.engine import GenerationEngine

    return GenerationEngine({TINY_RANDOM: tiny_model})
