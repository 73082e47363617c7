"""The engine on every model family's tiny folder, loaded as the worker loads it: each
task runs at the plan's size, Flux's true CFG reads the negative prompt, and the SDXL base
→ refiner handoff runs both stages under one progress count and stops in either."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.model_registry import ModelRegistry
from shared.plan import plan_job
from shared.schemas import GenerationRequest, JobPlan, Task
from shared.settings import Settings
from tests import model_folders as mf
from worker.engine import GenerationCanceled, GenerationEngine
from worker.images import outpaint_canvas  # noqa: F401  (the engine builds the canvas)
from worker.pipelines import load_pipeline, torch_dtype_for


@pytest.fixture(scope="module")
def registry(family_folders: dict[str, Path]) -> ModelRegistry:
    return ModelRegistry.from_settings(Settings(
        models={name: str(path) for name, path in family_folders.items()}))


@pytest.fixture(scope="module")
def engine(registry: ModelRegistry) -> GenerationEngine:
    settings = Settings(torch_threads=1)
    return GenerationEngine({name: load_pipeline(registry.get(name), settings)
                             for name in mf.FAMILY_FOLDERS})


def planned(registry: ModelRegistry, **fields: object) -> JobPlan:
    if fields.get("task", "text-to-image") != "text-to-image":
        fields.setdefault("init_image", "<the plan only needs its size>")
    request = GenerationRequest.model_validate({"prompt": "a red fox", "steps": 2, "seed": 3,
                                                **fields})
    refiner = registry.get(request.refiner.model) if request.refiner else None
    init = (96, 64) if request.task is not Task.TEXT_TO_IMAGE else None
    return plan_job(request, registry.get(request.model), init_size=init, random_seed=0,
                    refiner_spec=refiner).plan


def pixels(engine: GenerationEngine, plan: JobPlan) -> np.ndarray:
    init = Image.new("RGB", (plan.width, plan.height), (30, 120, 200))
    size = (plan.width, plan.height)
    if plan.task is Task.OUTPAINT:
        assert plan.outpaint is not None
        size = (plan.width - plan.outpaint.left - plan.outpaint.right,
                plan.height - plan.outpaint.top - plan.outpaint.bottom)
        init = init.resize(size)
    mask = Image.new("L", size, 255) if plan.task is Task.INPAINT else None
    images = engine.generate(plan, init if plan.task is not Task.TEXT_TO_IMAGE else None, mask)
    assert [im.image.size for im in images] == [(plan.width, plan.height)] * plan.num_images
    return np.asarray(images[0].image, dtype=np.int16)


def test_flux_image_to_image_runs_at_the_plans_size_not_1024(registry, engine) -> None:
    # FluxImg2ImgPipeline resizes to its default 1024x1024 unless given width/height.
    plan = planned(registry, model=mf.FLUX_DEV, task="image-to-image", width=96, height=64)
    pixels(engine, plan)
    plan = planned(registry, model=mf.SD3, task="image-to-image", width=96, height=64)
    pixels(engine, plan)


def test_flux_negative_prompt_changes_the_image_with_true_cfg(registry, engine) -> None:
    base = {"model": mf.FLUX_DEV, "width": 64, "height": 64}
    plain = pixels(engine, planned(registry, **base))
    dropped = planned(registry, negative_prompt="blurry", **base)
    assert dropped.negative_prompt is None  # no true_cfg_scale: nothing would change
    np.testing.assert_array_equal(pixels(engine, dropped), plain)
    true_cfg = pixels(engine, planned(registry, negative_prompt="blurry", true_cfg_scale=4.0,
                                      **base))
    assert np.abs(true_cfg - plain).mean() > 0.5


def test_flux_dev_reads_guidance_and_schnell_has_none_to_read(registry, engine) -> None:
    size = {"width": 64, "height": 64}  # Flux's default is 1024
    low = pixels(engine, planned(registry, model=mf.FLUX_DEV, guidance_scale=1.0, **size))
    high = pixels(engine, planned(registry, model=mf.FLUX_DEV, guidance_scale=8.0, **size))
    assert np.abs(low - high).mean() > 0.5
    assert planned(registry, model=mf.FLUX_SCHNELL).guidance_scale == 0.0
    # No guidance input, but true CFG still reads a negative prompt.
    schnell = pixels(engine, planned(registry, model=mf.FLUX_SCHNELL, **size))
    negative = pixels(engine, planned(registry, model=mf.FLUX_SCHNELL, negative_prompt="blurry",
                                      true_cfg_scale=3.0, **size))
    assert np.abs(schnell - negative).mean() > 0.5


def test_refiner_handoff_counts_both_stages_as_one(registry, engine) -> None:
    plan = planned(registry, model=mf.SDXL, steps=5, num_images=2, scheduler="euler",
                   refiner={"model": mf.SDXL_REFINER, "switch_at": 0.6})
    seen: list[tuple[int, int]] = []
    pixels_ = engine.generate(plan, on_step=lambda s, t: seen.append((s, t)) or False)
    assert len(pixels_) == 2
    # 3 base steps (to 0.6 of the schedule) then 2 refiner steps, out of 5 all along.
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    alone = engine.generate(planned(registry, model=mf.SDXL, steps=5, scheduler="euler"))
    assert np.abs(np.asarray(alone[0].image, dtype=np.int16)
                  - np.asarray(pixels_[0].image, dtype=np.int16)).mean() > 0.5


@pytest.mark.parametrize(("stop_at", "expected"), [(2, (2, 5)), (4, (4, 5))])
def test_refiner_handoff_cancels_in_either_stage(registry, engine, stop_at: int,
                                                 expected: tuple[int, int]) -> None:
    plan = planned(registry, model=mf.SDXL, steps=5, scheduler="euler",
                   refiner={"model": mf.SDXL_REFINER, "switch_at": 0.6})
    seen: list[int] = []
    with pytest.raises(GenerationCanceled) as caught:
        engine.generate(plan, on_step=lambda s, t: seen.append(s) or s >= stop_at)
    assert (caught.value.step, caught.value.total_steps) == expected
    assert seen == list(range(1, stop_at + 1))  # nothing ran after the stop


def test_a_refiner_folder_loads_as_image_to_image_only(engine) -> None:
    refiner = engine.models[mf.SDXL_REFINER]
    assert refiner.text_to_image is None and refiner.inpaint is None
    assert type(refiner.image_to_image).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert refiner.image_to_image.config.requires_aesthetics_score is True


def test_default_dtypes_per_family_and_device(registry) -> None:
    flux, sdxl = registry.get(mf.FLUX_DEV), registry.get(mf.SDXL)
    assert torch_dtype_for("cuda", flux) == torch.bfloat16
    assert torch_dtype_for("cuda", sdxl) == torch.float16
    assert torch_dtype_for("cpu", flux) == torch.float32
    assert torch_dtype_for("cpu", sdxl.model_copy(update={"dtype": "bfloat16"})) == (
        torch.bfloat16)
