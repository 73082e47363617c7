"""Upscale on real diffusers upscale pipelines (SD x4, SD latent x2) with tiny random
weights saved to a folder: loading, sizes, seeds, tiling and its blend, progress, cancel."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionLatentUpscalePipeline, StableDiffusionUpscalePipeline
from PIL import Image

from shared.model_registry import ModelSpec, family_defaults
from shared.plan import plan_job
from shared.schemas import GenerationRequest, JobPlan, Task, UpscaleTiling
from shared.settings import Settings
from tests.upscalers import save_tiny_upscalers
from worker.engine import GenerationCanceled, GenerationEngine
from worker.images import parameters_text
from worker.pipelines import LoadedModel, ModelLoadError, load_pipeline
from worker.upscale import blend_tiles, feather_weights, tile_boxes, tile_seed

STEPS = 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_tiny_upscalers(tmp_path_factory.mktemp("upscalers"))


def spec_for(path: Path, name: str, **overrides: object) -> ModelSpec:
    return ModelSpec(name=name, source=str(path), **{**family_defaults(str(path)), **overrides})


@pytest.fixture(scope="module")
def models(folders: dict[str, Path]) -> dict[str, LoadedModel]:
    settings = Settings(torch_threads=1)
    specs = [
        spec_for(folders["x4"], "x4"),
        spec_for(folders["x2"], "x2"),
        # The same weights with a small tile, so a small input is tiled.
        spec_for(folders["x4"], "x4-tiled", tile_size=16, tile_overlap=8),
        spec_for(folders["x2"], "x2-tiled", tile_size=32, tile_overlap=8),
    ]
    return {spec.name: load_pipeline(spec, settings) for spec in specs}


@pytest.fixture(scope="module")
def engine(models: dict[str, LoadedModel]) -> GenerationEngine:
    return GenerationEngine(models)


def gradient(size: tuple[int, int]) -> Image.Image:
    x = np.linspace(0, 255, size[0])[None, :, None]
    y = np.linspace(0, 255, size[1])[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (size[1], size[0], 1)),
                          np.broadcast_to(y, (size[1], size[0], 1)),
                          np.full((size[1], size[0], 1), 128.0)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


def plan_for(models: dict[str, LoadedModel], model: str, image: Image.Image,
             **fields: object) -> JobPlan:
    request = GenerationRequest.model_validate(
        {"task": "upscale", "model": model, "init_image": "x", "steps": STEPS, "seed": 7,
         **fields})
    return plan_job(request, models[model].spec, init_size=image.size, random_seed=0).plan


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_family_defaults_read_the_upscale_pipeline_class(folders: dict[str, Path]) -> None:
    x4, x2 = family_defaults(str(folders["x4"])), family_defaults(str(folders["x2"]))
    assert x4["tasks"] == [Task.UPSCALE] and x4["scales"] == [4]
    assert x4["max_noise_level"] == 350 and x4["default_noise_level"] == 20
    assert x2["tasks"] == [Task.UPSCALE] and x2["scales"] == [2]
    assert x2["schedulers"] == ["euler"] and "max_noise_level" not in x2


def test_upscale_folders_load_as_their_own_pipeline_class(models) -> None:
    assert isinstance(models["x4"].upscale, StableDiffusionUpscalePipeline)
    assert isinstance(models["x2"].upscale, StableDiffusionLatentUpscalePipeline)
    for model in models.values():
        assert model.pipeline_for(Task.UPSCALE) is model.upscale
        assert model.text_to_image is None and model.pipeline_for(Task.TEXT_TO_IMAGE) is None


def test_a_text_to_image_folder_is_not_loaded_as_an_upscaler(tmp_path: Path, tiny_model) -> None:
    assert tiny_model.text_to_image is not None
    tiny_model.text_to_image.save_pretrained(tmp_path / "sd")
    spec = ModelSpec(name="wrong", source=str(tmp_path / "sd"), tasks=[Task.UPSCALE],
                     scales=[4])
    with pytest.raises(ModelLoadError, match="StableDiffusionPipeline, not one of"):
        load_pipeline(spec, Settings(torch_threads=1))


@pytest.mark.parametrize(("model", "size", "scale"), [("x4", (24, 16), 4), ("x2", (48, 32), 2)])
def test_output_is_the_input_times_the_scale_one_image_per_seed(
    engine: GenerationEngine, models, model: str, size: tuple[int, int], scale: int
) -> None:
    image = gradient(size)
    plan = plan_for(models, model, image, num_images=2)
    assert plan.tile is None and plan.scale == scale
    results = engine.generate(plan, image)
    assert [r.seed for r in results] == [7, 8]
    assert all(r.image.size == (size[0] * scale, size[1] * scale) for r in results)
    again = engine.generate(plan, image)
    assert [pixels(r.image).tolist() for r in results] == [
        pixels(r.image).tolist() for r in again]
    assert np.abs(pixels(results[0].image) - pixels(results[1].image)).max() > 0


def test_an_untiled_run_is_the_pipeline_run_with_the_image_seed(engine, models) -> None:
    image = gradient((24, 16))
    plan = plan_for(models, "x4", image, noise_level=40, prompt="a cat")
    [result] = engine.generate(plan, image)
    pipe = models["x4"].upscale
    assert pipe is not None
    direct = pipe(prompt="a cat", image=image, num_inference_steps=STEPS,
                  guidance_scale=plan.guidance_scale, noise_level=40,
                  generator=[torch.Generator().manual_seed(7)]).images[0]
    np.testing.assert_array_equal(pixels(result.image), pixels(direct))


@pytest.mark.parametrize(("model", "size", "scale"),
                         [("x4-tiled", (40, 24), 4), ("x2-tiled", (64, 48), 2)])
def test_tiled_input_gives_the_same_size_and_reports_steps_over_all_tiles(
    engine: GenerationEngine, models, model: str, size: tuple[int, int], scale: int
) -> None:
    image = gradient(size)
    plan = plan_for(models, model, image)
    assert plan.tile is not None
    tiles = len(tile_boxes(*size, plan.tile))
    assert tiles > 1
    steps: list[tuple[int, int]] = []
    [result] = engine.generate(plan, image, on_step=lambda s, t: steps.append((s, t)) or False)
    assert result.image.size == (size[0] * scale, size[1] * scale)
    assert steps == [(s, tiles * STEPS) for s in range(1, tiles * STEPS + 1)]
    [again] = engine.generate(plan, image)
    np.testing.assert_array_equal(pixels(result.image), pixels(again.image))


@pytest.mark.parametrize(("model", "size"),
                         [("x4", (40, 24)), ("x4-tiled", (40, 24)), ("x2", (64, 48))])
def test_cancel_stops_within_a_step(engine: GenerationEngine, models, model: str,
                                    size: tuple[int, int]) -> None:
    image = gradient(size)
    plan = plan_for(models, model, image)
    seen: list[int] = []

    def stop_at_second(step: int, total: int) -> bool:
        seen.append(step)
        return step >= 2

    with pytest.raises(GenerationCanceled) as raised:
        engine.generate(plan, image, on_step=stop_at_second)
    assert raised.value.step == 2 and seen == [1, 2]


def test_an_input_of_another_size_than_planned_is_refused(engine, models) -> None:
    plan = plan_for(models, "x4", gradient((24, 16)))
    with pytest.raises(ValueError, match="init_image is 32x16, the plan says 24x16"):
        engine.generate(plan, gradient((32, 16)))


def test_png_parameters_say_model_scale_noise_and_tiling(models) -> None:
    image = gradient((40, 24))
    text = parameters_text(plan_for(models, "x4-tiled", image), 7)
    assert "Model: x4-tiled" in text and "Size: 160x96" in text
    assert "Upscale: 4x, Noise level: 20, Tiles: 16px overlap 8px" in text
    assert "Tiles: none" in parameters_text(plan_for(models, "x2", gradient((64, 48))), 7)


@pytest.mark.parametrize(("width", "height"), [(40, 24), (64, 64), (136, 16), (16, 16)])
def test_tiles_cover_the_input_with_full_size_tiles_and_the_overlap(width: int,
                                                                   height: int) -> None:
    tiling = UpscaleTiling(size=32, overlap=8)
    boxes = tile_boxes(width, height, tiling)
    covered = np.zeros((height, width), dtype=int)
    for left, top, right, bottom in boxes:
        covered[top:bottom, left:right] += 1
        assert right - left == min(32, width) and bottom - top == min(32, height)
        assert left % 8 == 0 and top % 8 == 0
    assert covered.min() >= 1
    xs = sorted({box[0] for box in boxes})
    assert all(b - a <= 32 - 8 for a, b in itertools.pairwise(xs))


def test_tile_seeds_differ_per_tile_and_follow_the_image_seed() -> None:
    assert tile_seed(7, 0) == tile_seed(7, 0)
    assert len({tile_seed(7, i) for i in range(16)} | {tile_seed(8, 0)}) == 17


def test_blending_tiles_of_one_image_gives_that_image_back() -> None:
    """Where the tiles agree, the weighted mean is exact: the join itself adds no seam."""
    whole = gradient((160, 96))
    boxes = [tuple(v * 4 for v in box)
             for box in tile_boxes(40, 24, UpscaleTiling(size=16, overlap=8))]
    tiles = [(box, whole.crop(box)) for box in boxes]
    blended = blend_tiles(tiles, whole.size, ramp=32)  # type: ignore[arg-type]
    np.testing.assert_array_equal(pixels(blended), pixels(whole))


def test_blending_cross_fades_across_the_overlap_without_a_jump() -> None:
    """Two tiles that disagree (black, white) meet in a ramp: no step larger than the
    colour difference spread over the overlap."""
    black, white = Image.new("RGB", (64, 16), 0), Image.new("RGB", (64, 16), (255,) * 3)
    blended = blend_tiles([((0, 0, 64, 16), black), ((32, 0, 96, 16), white)], (96, 16),
                          ramp=32)
    row = pixels(blended)[8, :, 0]
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0) and np.abs(np.diff(row)).max() <= 255 / 32 + 1
    hard = blend_tiles([((0, 0, 64, 16), black), ((32, 0, 96, 16), white)], (96, 16), ramp=0)
    assert np.abs(np.diff(pixels(hard)[8, :, 0])).max() > 100  # what feathering avoids


def test_feather_weights_stay_one_on_the_image_edges() -> None:
    weights = feather_weights((0, 0, 64, 64), (64, 64), ramp=16)
    assert np.all(weights == 1)
    inner = feather_weights((32, 0, 96, 64), (128, 64), ramp=16)[:, :, 0]
    assert inner.min() > 0 and inner[0, 0] < 0.1 and inner[0, -1] < 0.1
