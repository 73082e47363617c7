"""The fast path on an NVIDIA GPU (skipped where CUDA is absent): half precision with
every default, batched images still equal to unbatched ones, and the compiled UNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.model_registry import BUILTIN_MODELS, TINY_RANDOM
from shared.settings import Settings
from tests.factories import make_plan
from worker.engine import GenerationEngine
from worker.fast_path import warm_up
from worker.pipelines import load_pipeline

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Half precision rounds each step's activations to 11 bits, so a batched call may drift a
# little further from the unbatched one than float32 on the CPU does.
HALF_PRECISION_PIXEL_TOLERANCE = 4


@pytest.fixture(scope="module")
def fast_engine() -> GenerationEngine:
    model = load_pipeline(BUILTIN_MODELS[TINY_RANDOM], Settings(device="cuda"))
    return GenerationEngine({TINY_RANDOM: model})


def test_the_gpu_pipeline_is_half_precision_channels_last_with_tf32(fast_engine) -> None:
    pipe = fast_engine.models[TINY_RANDOM].text_to_image
    assert pipe.device.type == "cuda" and pipe.dtype == torch.float16
    weight = next(p for p in pipe.unet.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.backends.cuda.matmul.allow_tf32 and pipe.vae.use_slicing


def test_batched_images_equal_unbatched_ones_on_the_gpu(fast_engine) -> None:
    plans = [make_plan(prompt=f"a cat {i}", seed=i, width=128, height=128) for i in range(4)]
    batched = fast_engine.generate_batch(plans, [lambda step, total: False] * 4)
    for plan, result in zip(plans, batched, strict=True):
        assert isinstance(result, list)
        [alone] = fast_engine.generate(plan)
        difference = np.abs(np.asarray(result[0].image, np.int16)
                            - np.asarray(alone.image, np.int16))
        assert difference.max() <= HALF_PRECISION_PIXEL_TOLERANCE


def test_a_compiled_worker_warms_up_and_then_generates() -> None:
    settings = Settings(device="cuda", torch_compile=True)
    engine = GenerationEngine({TINY_RANDOM: load_pipeline(BUILTIN_MODELS[TINY_RANDOM], settings)})
    assert warm_up(engine, max_batch=2)[TINY_RANDOM] > 0
    [image] = engine.generate(make_plan(seed=1))
    assert not np.isnan(np.asarray(image.image, np.float32)).any()
