"""The generation engine on the tiny-random model: every task, seeds, CFG, cancellation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.schemas import SCHEDULERS, OutpaintMargins, OutputFormat
from tests.worker.conftest import make_params
from worker.engine import GenerationCanceled, GenerationEngine
from worker.images import encode_image, parameters_text


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def png(engine: GenerationEngine, **overrides: object) -> list[bytes]:
    params = make_params(**overrides)
    return [
        encode_image(result.image, OutputFormat.PNG, parameters_text(params, result.seed))
        for result in engine.generate(params)
    ]


@pytest.fixture(scope="module")
def init_image(engine: GenerationEngine) -> Image.Image:
    return engine.generate(make_params(seed=99))[0].image


def test_text_to_image_returns_one_image_per_seed_at_the_requested_size(engine) -> None:
    results = engine.generate(make_params(width=96, height=64, num_images=3, seed=10))
    assert [r.seed for r in results] == [10, 11, 12]
    assert all(r.image.size == (96, 64) and r.image.mode == "RGB" for r in results)


def test_same_request_and_seed_give_byte_identical_pngs(engine) -> None:
    assert png(engine, seed=123) == png(engine, seed=123)


def test_each_image_depends_only_on_its_own_seed(engine) -> None:
    batch = engine.generate(make_params(num_images=2, seeds=[5, 6]))
    [alone] = engine.generate(make_params(num_images=1, seeds=[6]))
    # Equal up to float rounding (a batched matmul may sum in another order).
    assert np.abs(pixels(batch[1].image) - pixels(alone.image)).max() <= 2
    assert np.abs(pixels(batch[0].image) - pixels(batch[1].image)).max() > 5


def test_different_seeds_give_different_images(engine) -> None:
    assert png(engine, seed=1) != png(engine, seed=2)


def test_guidance_scale_and_negative_prompt_change_the_image(engine) -> None:
    guided = pixels(engine.generate(make_params(guidance_scale=7.0))[0].image)
    unguided = pixels(engine.generate(make_params(guidance_scale=1.0))[0].image)
    negative = pixels(
        engine.generate(make_params(guidance_scale=7.0, negative_prompt="blurry"))[0].image
    )
    assert np.abs(guided - unguided).max() > 5
    assert np.abs(guided - negative).max() > 5


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_runs_and_reports_its_real_step_count(engine, scheduler: str) -> None:
    seen: list[tuple[int, int]] = []
    [result] = engine.generate(
        make_params(scheduler=scheduler, steps=3),
        on_step=lambda step, total: seen.append((step, total)) or False,
    )
    assert result.image.size == (64, 64)
    total = seen[0][1]
    assert seen == [(step, total) for step in range(1, total + 1)]
    # Second-order samplers evaluate the model about twice per step; PNDM adds a warm-up.
    assert total >= 3


def test_a_scheduler_choice_does_not_leak_into_the_next_job(tiny_model, engine) -> None:
    fresh = GenerationEngine({"tiny-random": tiny_model})
    before = png(fresh, scheduler="dpmpp_2m")
    png(engine, scheduler="dpmpp_2m_karras")
    assert png(engine, scheduler="dpmpp_2m") == before


def test_image_to_image_runs_steps_times_strength(engine, init_image) -> None:
    seen: list[tuple[int, int]] = []
    params = make_params(task="image-to-image", steps=8, strength=0.5, width=64, height=64)
    [result] = engine.generate(params, init_image, on_step=lambda s, t: seen.append((s, t)) or False)
    assert seen == [(step, 4) for step in range(1, 5)]
    assert result.image.size == (64, 64)
    other_init = Image.new("RGB", (64, 64), (200, 30, 30))
    assert pixels(engine.generate(params, other_init)[0].image).tolist() != pixels(
        result.image
    ).tolist()


def test_image_to_image_resizes_the_init_image_to_the_requested_size(engine, init_image) -> None:
    params = make_params(task="image-to-image", width=96, height=48)
    assert engine.generate(params, init_image)[0].image.size == (96, 48)


def test_inpaint_follows_the_mask(engine, init_image) -> None:
    params = make_params(task="inpaint", steps=4, strength=1.0)
    left = Image.new("L", (64, 64), 0)
    left.paste(255, (0, 0, 32, 64))
    right = Image.new("L", (64, 64), 0)
    right.paste(255, (32, 0, 64, 64))
    seen: list[tuple[int, int]] = []
    on_left = engine.generate(params, init_image, left, lambda s, t: seen.append((s, t)) or False)
    on_right = engine.generate(params, init_image, right)
    assert on_left[0].image.size == (64, 64)
    assert seen[-1] == (4, 4)
    assert pixels(on_left[0].image).tolist() != pixels(on_right[0].image).tolist()


def test_outpaint_output_is_the_init_image_plus_margins(engine, init_image) -> None:
    margins = OutpaintMargins(left=16, right=0, top=8, bottom=24)
    params = make_params(task="outpaint", outpaint=margins, width=64 + 16, height=64 + 32)
    seen: list[tuple[int, int]] = []
    [result] = engine.generate(params, init_image, on_step=lambda s, t: seen.append((s, t)) or False)
    assert result.image.size == (80, 96)
    # The new area is painted from scratch: all the steps run whatever the strength.
    assert seen[-1] == (4, 4)


def test_cancel_from_on_step_stops_the_run_early(engine) -> None:
    calls: list[int] = []

    def cancel_at_third_step(step: int, total: int) -> bool:
        calls.append(step)
        return step == 3

    with pytest.raises(GenerationCanceled) as canceled:
        engine.generate(make_params(steps=20), on_step=cancel_at_third_step)
    assert calls == [1, 2, 3]
    assert (canceled.value.step, canceled.value.total_steps) == (3, 20)
    # The shared pipeline is usable again straight after a cancel.
    assert len(engine.generate(make_params(steps=2))) == 1


@pytest.mark.parametrize(
    ("overrides", "images", "argument"),
    [
        ({"model": "sdxl"}, (), "model 'sdxl'"),
        ({"width": 60}, (), "width"),
        ({"height": 0}, (), "height"),
        ({"num_images": 2, "seeds": [1]}, (), "seeds"),
        ({"scheduler": "k_lms"}, (), "scheduler"),
        ({"steps": 0}, (), "steps"),
        ({"task": "image-to-image"}, (), "init_image"),
        ({"task": "inpaint"}, ("init",), "mask_image"),
        ({"task": "image-to-image", "steps": 2, "strength": 0.4}, ("init",), "strength"),
        ({"task": "outpaint", "outpaint": OutpaintMargins()}, ("init",), "outpaint"),
        ({"task": "outpaint", "outpaint": OutpaintMargins(left=64)}, ("init",), "outpaint"),
    ],
)
def test_check_inputs_names_the_bad_argument(engine, overrides, images, argument) -> None:
    init = Image.new("RGB", (64, 64)) if "init" in images else None
    with pytest.raises(ValueError, match=argument):
        engine.check_inputs(make_params(**overrides), init, None)


def test_check_inputs_refuses_a_task_the_model_does_not_list(tiny_model) -> None:
    from worker.pipelines import LoadedModel

    spec = tiny_model.spec.model_copy(update={"tasks": ["text-to-image"]})
    engine = GenerationEngine({"tiny-random": LoadedModel(**{**vars(tiny_model), "spec": spec})})
    with pytest.raises(ValueError, match="task 'inpaint'"):
        engine.check_inputs(make_params(task="inpaint"), Image.new("RGB", (64, 64)), None)


def test_generated_png_carries_the_parameters(engine) -> None:
    [data] = png(engine, prompt="a lighthouse", negative_prompt="fog", steps=3, seed=42,
                 scheduler="euler_ancestral", guidance_scale=6.5)
    text = Image.open(io.BytesIO(data)).text["parameters"]
    assert text == (
        "a lighthouse\nNegative prompt: fog\n"
        "Steps: 3, Sampler: Euler a, CFG scale: 6.5, Seed: 42, Size: 64x64, Model: tiny-random"
    )
