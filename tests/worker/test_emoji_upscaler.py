"""The embedded emoji upscaler (``builtin:emoji-upscaler``) served as an upscale model:
its spec agrees with the pipeline, and the engine runs it whole, tiled and canceled."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared.model_registry import BUILTIN_MODELS, EMOJI_UPSCALER
from shared.plan import plan_job
from shared.schemas import GenerationRequest, JobPlan, Task
from shared.settings import Settings
from worker.engine import GenerationCanceled, GenerationEngine
from worker.pipelines import LoadedModel, load_pipeline

SPEC = BUILTIN_MODELS[EMOJI_UPSCALER]
# Mean step (0-255) a seam may add between two neighbouring lines of pixels.
SEAM_TOLERANCE = 3.0
TILED = SPEC.model_copy(update={"tile_size": 32, "tile_overlap": 8})


@pytest.fixture(scope="module")
def upscaler() -> LoadedModel:
    return load_pipeline(SPEC, Settings(torch_threads=1))


@pytest.fixture(scope="module")
def engine(upscaler: LoadedModel) -> GenerationEngine:
    return GenerationEngine({EMOJI_UPSCALER: upscaler})


@pytest.fixture(scope="module")
def emoji() -> Image.Image:
    """A red disc on white, 64x64: an emoji's colours and edges."""
    y, x = np.mgrid[:64, :64]
    disc = (x - 32) ** 2 + (y - 32) ** 2 < 24 ** 2
    pixels = np.full((64, 64, 3), 255, dtype=np.uint8)
    pixels[disc] = (220, 30, 40)
    return Image.fromarray(pixels)


def plan(image: Image.Image, spec=SPEC, **fields: object) -> JobPlan:
    request = GenerationRequest.model_validate(
        {"task": "upscale", "model": EMOJI_UPSCALER, "init_image": "-", "seed": 3, **fields})
    return plan_job(request, spec, init_size=image.size, random_seed=0).plan


def test_the_spec_says_what_the_pipeline_does(upscaler: LoadedModel) -> None:
    from models import upscaler_pipeline

    pipe = upscaler.upscale
    assert pipe is not None and upscaler.pipeline_for(Task.UPSCALE) is pipe
    assert SPEC.scales == [pipe.scale] == [2]
    assert SPEC.default_steps == upscaler_pipeline.DEFAULT_STEPS
    assert SPEC.default_noise_level == pipe.default_noise_level
    assert SPEC.max_noise_level == pipe.config.max_noise_level
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and SPEC.default_scheduler == "ddim"


def test_an_emoji_is_upscaled_to_twice_its_size_and_keeps_its_colours(
    engine: GenerationEngine, emoji: Image.Image
) -> None:
    [result] = engine.generate(plan(emoji), emoji)
    assert result.image.size == (128, 128) and result.seed == 3
    big = np.asarray(result.image, dtype=np.float64)
    reference = np.asarray(emoji.resize((128, 128), Image.Resampling.BICUBIC), dtype=np.float64)
    assert np.abs(big - reference).mean() < 20  # the same picture, larger
    [again] = engine.generate(plan(emoji), emoji)
    np.testing.assert_array_equal(np.asarray(result.image), np.asarray(again.image))


def test_tiled_it_gives_the_same_picture_without_seams(
    engine: GenerationEngine, emoji: Image.Image
) -> None:
    tiled_plan = plan(emoji, TILED)
    assert tiled_plan.tile is not None
    steps: list[tuple[int, int]] = []
    [tiled] = engine.generate(tiled_plan, emoji,
                              on_step=lambda s, t: steps.append((s, t)) or False)
    [whole] = engine.generate(plan(emoji), emoji)
    assert tiled.image.size == whole.image.size == (128, 128)
    assert steps[-1][0] == steps[-1][1] == 9 * tiled_plan.steps  # 3x3 tiles of 32 on 64
    a, b = (np.asarray(i.image, dtype=np.float64) for i in (tiled, whole))
    assert np.abs(a - b).mean() < 10
    # No edge appears where tiles meet: line by line across the image, the tiled output
    # changes no more sharply than the one-piece output does at the same place.
    for axis, across in ((1, (0, 2)), (0, (1, 2))):
        tiled_steps = np.abs(np.diff(a, axis=axis)).mean(axis=across)
        whole_steps = np.abs(np.diff(b, axis=axis)).mean(axis=across)
        assert (tiled_steps - whole_steps).max() < SEAM_TOLERANCE


@pytest.mark.parametrize("scheduler", SPEC.schedulers)
def test_every_listed_scheduler_runs(engine: GenerationEngine, emoji: Image.Image,
                                     scheduler: str) -> None:
    [result] = engine.generate(plan(emoji, scheduler=scheduler), emoji)
    assert result.image.size == (128, 128)


def test_cancel_stops_it_within_a_step(engine: GenerationEngine, emoji: Image.Image) -> None:
    seen: list[int] = []

    def stop_at_first(step: int, total: int) -> bool:
        seen.append(step)
        return True

    with pytest.raises(GenerationCanceled) as raised:
        engine.generate(plan(emoji, TILED), emoji, on_step=stop_at_first)
    assert raised.value.step == 1 and seen == [1]
