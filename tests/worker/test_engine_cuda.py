"""The engine on a GPU in half precision (skipped where CUDA is absent)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.model_registry import BUILTIN_MODELS, TINY_RANDOM
from shared.schemas import NOISE_SCHEDULERS, OutpaintMargins, OutputFormat
from shared.settings import Settings
from tests.factories import make_plan
from worker.engine import GenerationCanceled, GenerationEngine
from worker.images import encode_image, parameters_text

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def cuda_model():
    from worker.pipelines import load_pipeline

    return load_pipeline(BUILTIN_MODELS[TINY_RANDOM], Settings(device="cuda"))


@pytest.fixture(scope="module")
def cuda_engine(cuda_model) -> GenerationEngine:
    return GenerationEngine({TINY_RANDOM: cuda_model})


def test_every_pipeline_is_half_precision_on_the_gpu(cuda_model) -> None:
    for pipe in (cuda_model.text_to_image, cuda_model.image_to_image, cuda_model.inpaint):
        assert pipe.device.type == "cuda" and pipe.dtype == torch.float16
        assert pipe.unet is cuda_model.text_to_image.unet


def test_same_seed_gives_identical_pngs_and_no_nans(cuda_engine) -> None:
    def pngs(seed: int) -> list[bytes]:
        params = make_plan(seed=seed, num_images=2, width=128, height=96)
        return [encode_image(r.image, OutputFormat.PNG, parameters_text(params, r.seed))
                for r in cuda_engine.generate(params)]

    first = pngs(11)
    assert first == pngs(11)
    assert first != pngs(12)
    image = np.asarray(cuda_engine.generate(make_plan(seed=11))[0].image)
    assert image.std() > 1  # NaN latents decode to a flat black image


@pytest.mark.parametrize("scheduler", NOISE_SCHEDULERS)
def test_every_scheduler_runs_in_half_precision(cuda_engine, scheduler: str) -> None:
    [result] = cuda_engine.generate(make_plan(scheduler=scheduler, steps=4))
    assert np.asarray(result.image).std() > 1


def test_image_tasks_run_on_the_gpu(cuda_engine) -> None:
    init = cuda_engine.generate(make_plan(seed=1))[0].image
    mask = init.convert("L").point(lambda v: 255 if v > 128 else 0)
    img2img, inpaint = (make_plan(task=task, strength=0.75) for task in ("image-to-image", "inpaint"))
    assert cuda_engine.generate(img2img, init)[0].image.size == (64, 64)
    assert cuda_engine.generate(inpaint, init, mask)[0].image.size == (64, 64)
    outpaint = make_plan(task="outpaint", outpaint=OutpaintMargins(right=32), width=96, height=64,
                         strength=1.0)
    assert cuda_engine.generate(outpaint, init)[0].image.size == (96, 64)


def test_cancel_stops_a_gpu_run(cuda_engine) -> None:
    steps: list[int] = []
    with pytest.raises(GenerationCanceled):
        cuda_engine.generate(make_plan(steps=50), on_step=lambda s, t: steps.append(s) or s == 2)
    assert steps == [1, 2]
