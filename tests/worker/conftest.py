"""Generation-worker fixtures: the tiny-random model, loaded once for the whole session."""

from __future__ import annotations

import pytest

from shared.model_registry import BUILTIN_MODELS, TINY_RANDOM
from shared.schemas import JobParams
from shared.settings import Settings


def make_params(**overrides: object) -> JobParams:
    """A small, fast text-to-image job on tiny-random; override any field."""
    fields: dict[str, object] = {
        "task": "text-to-image", "model": TINY_RANDOM, "prompt": "a red fox in the snow",
        "negative_prompt": None, "width": 64, "height": 64, "num_images": 1, "steps": 4,
        "guidance_scale": 5.0, "scheduler": "ddim", "seed": 7, "seeds": [7], "strength": 0.75,
        "outpaint": None, "output_format": "png", "priority": "normal", "webhook": None,
    }
    fields.update(overrides)
    if "seeds" not in overrides:
        fields["seeds"] = [int(fields["seed"]) + i for i in range(int(fields["num_images"]))]
    return JobParams.model_validate(fields)


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
