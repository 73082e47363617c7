"""The generation engine on the tiny-random model: every task, seeds, CFG, cancellation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.schemas import NOISE_SCHEDULERS, OutpaintMargins, OutputFormat
from tests.factories import make_plan
from worker.engine import GenerationCanceled, GenerationEngine
from worker.images import encode_image, parameters_text


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def png(engine: GenerationEngine, **overrides: object) -> list[bytes]:
    plan = make_plan(**overrides)
    return [
        encode_image(result.image, OutputFormat.PNG, parameters_text(plan, result.seed))
        for result in engine.generate(plan)
    ]


@pytest.fixture(scope="module")
def init_image(engine: GenerationEngine) -> Image.Image:
    return engine.generate(make_plan(seed=99))[0].image


def test_text_to_image_returns_one_image_per_seed_at_the_requested_size(engine) -> None:
    results = engine.generate(make_plan(width=96, height=64, num_images=3, seed=10))
    assert [r.seed for r in results] == [10, 11, 12]
    assert all(r.image.size == (96, 64) and r.image.mode == "RGB" for r in results)


def test_same_request_and_seed_give_byte_identical_pngs(engine) -> None:
    assert png(engine, seed=123) == png(engine, seed=123)


def test_each_image_depends_only_on_its_own_seed(engine) -> None:
    batch = engine.generate(make_plan(num_images=2, seeds=[5, 6]))
    [alone] = engine.generate(make_plan(num_images=1, seeds=[6]))
    # Equal up to float rounding (a batched matmul may sum in another order).
    assert np.abs(pixels(batch[1].image) - pixels(alone.image)).max() <= 2
    assert np.abs(pixels(batch[0].image) - pixels(batch[1].image)).max() > 5


def test_different_seeds_give_different_images(engine) -> None:
    assert png(engine, seed=1) != png(engine, seed=2)


def test_guidance_scale_and_negative_prompt_change_the_image(engine) -> None:
    guided = pixels(engine.generate(make_plan(guidance_scale=7.0))[0].image)
    unguided = pixels(engine.generate(make_plan(guidance_scale=1.0))[0].image)
    negative = pixels(
        engine.generate(make_plan(guidance_scale=7.0, negative_prompt="blurry"))[0].image
    )
    assert np.abs(guided - unguided).max() > 5
    assert np.abs(guided - negative).max() > 5


@pytest.mark.parametrize("scheduler", NOISE_SCHEDULERS)
def test_every_scheduler_runs_and_reports_its_real_step_count(engine, scheduler: str) -> None:
    seen: list[tuple[int, int]] = []
    [result] = engine.generate(
        make_plan(scheduler=scheduler, steps=3),
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
    params = make_plan(task="image-to-image", steps=8, strength=0.5, width=64, height=64)
    [result] = engine.generate(params, init_image, on_step=lambda s, t: seen.append((s, t)) or False)
    assert seen == [(step, 4) for step in range(1, 5)]
    assert result.image.size == (64, 64)
    other_init = Image.new("RGB", (64, 64), (200, 30, 30))
    assert pixels(engine.generate(params, other_init)[0].image).tolist() != pixels(
        result.image
    ).tolist()


def test_image_to_image_runs_at_the_plans_size(engine) -> None:
    plan = make_plan(task="image-to-image", width=96, height=48, strength=0.75)
    init = Image.new("RGB", (96, 48), (30, 200, 30))
    assert engine.generate(plan, init)[0].image.size == (96, 48)


def test_inpaint_follows_the_mask(engine, init_image) -> None:
    params = make_plan(task="inpaint", steps=4, strength=1.0)
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
    params = make_plan(task="outpaint", outpaint=margins, width=64 + 16, height=64 + 32,
                       strength=1.0)
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
        engine.generate(make_plan(steps=20), on_step=cancel_at_third_step)
    assert calls == [1, 2, 3]
    assert (canceled.value.step, canceled.value.total_steps) == (3, 20)
    # The shared pipeline is usable again straight after a cancel.
    assert len(engine.generate(make_plan(steps=2))) == 1


@pytest.mark.parametrize(
    ("overrides", "init_size", "mask_size", "argument"),
    [
        ({"model": "sdxl"}, None, None, "model 'sdxl'"),
        ({"task": "image-to-image", "strength": 0.5}, None, None, "init_image is required"),
        ({"task": "inpaint", "strength": 0.5}, (64, 64), None, "mask_image is required"),
        # Inputs are sized once, at submit; an input of another size is a broken record.
        ({"task": "image-to-image", "strength": 0.5}, (32, 64), None, "init_image is 32x64"),
        ({"task": "inpaint", "strength": 0.5}, (64, 64), (64, 32), "mask_image is 64x32"),
        ({"task": "outpaint", "strength": 1.0, "width": 80,
          "outpaint": OutpaintMargins(left=16)}, (80, 64), None, "init_image is 80x64"),
    ],
)
def test_check_inputs_names_the_bad_argument(
    engine, overrides, init_size, mask_size, argument
) -> None:
    init = Image.new("RGB", init_size) if init_size else None
    mask = Image.new("L", mask_size) if mask_size else None
    with pytest.raises(ValueError, match=argument):
        engine.check_inputs(make_plan(**overrides), init, mask)


def test_a_scheduler_of_the_other_family_is_refused_not_swapped(engine) -> None:
    with pytest.raises(ValueError, match="flow_match_euler.*noise-prediction"):
        engine.generate(make_plan(scheduler="flow_match_euler"))


def test_check_inputs_refuses_a_task_the_model_does_not_list(tiny_model) -> None:
    from worker.pipelines import LoadedModel

    spec = tiny_model.spec.model_copy(update={"tasks": ["text-to-image"]})
    engine = GenerationEngine({"tiny-random": LoadedModel(**{**vars(tiny_model), "spec": spec})})
    with pytest.raises(ValueError, match="task 'inpaint'"):
        engine.check_inputs(make_plan(task="inpaint", strength=0.5), Image.new("RGB", (64, 64)),
                            Image.new("L", (64, 64)))


def test_generated_png_carries_the_parameters(engine) -> None:
    [data] = png(engine, prompt="a lighthouse", negative_prompt="fog", steps=3, seed=42,
                 scheduler="euler_ancestral", guidance_scale=6.5)
    text = Image.open(io.BytesIO(data)).text["parameters"]
    assert text == (
        "a lighthouse\nNegative prompt: fog\n"
        "Steps: 3, Sampler: Euler a, CFG scale: 6.5, Seed: 42, Size: 64x64, Model: tiny-random"
    )
