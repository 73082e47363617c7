"""shared.plan: a request plus its model's spec → the complete plan, every refusal naming
its field, every change reported as a warning."""

from __future__ import annotations

import pytest

from shared.model_registry import (
    BUILTIN_MODELS,
    EMOJI,
    EMOJI_UPSCALER,
    TINY_RANDOM,
    GuidanceKind,
    ModelSpec,
)
from shared.plan import DEFAULT_STRENGTH, OUTPAINT_STRENGTH, PlanError, PlannedJob, plan_job
from shared.schemas import MAX_SEED, GenerationRequest, Task

TINY = BUILTIN_MODELS[TINY_RANDOM]
IMAGE = "<base64 never decoded by the plan>"


def plan(spec: ModelSpec = TINY, init_size: tuple[int, int] | None = None,
         random_seed: int = 1234, **fields: object) -> PlannedJob:
    request = GenerationRequest.model_validate({"prompt": "a red fox", **fields})
    return plan_job(request, spec, init_size=init_size, random_seed=random_seed)


def refusal(**kwargs: object) -> PlanError:
    with pytest.raises(PlanError) as caught:
        plan(**kwargs)  # type: ignore[arg-type]
    return caught.value


def test_defaults_come_from_the_model_spec() -> None:
    emoji = BUILTIN_MODELS[EMOJI]
    result = plan(emoji)
    p = result.plan
    assert (p.model, p.width, p.height) == (EMOJI, emoji.default_width, emoji.default_height)
    assert (p.steps, p.guidance_scale, p.scheduler) == (
        emoji.default_steps, emoji.default_guidance_scale, emoji.default_scheduler)
    assert p.strength is None and p.negative_prompt is None and result.warnings == []
    assert result.input_size is None


def test_seeds_follow_the_given_seed_and_wrap_at_2_to_the_32() -> None:
    assert plan(seed=MAX_SEED, num_images=3).plan.seeds == [MAX_SEED, 0, 1]
    assert plan(random_seed=77, num_images=2).plan.seeds == [77, 78]


def test_image_task_size_follows_the_init_image_and_its_aspect() -> None:
    common = {"task": "image-to-image", "init_image": IMAGE}
    assert plan(init_size=(100, 60), **common).plan.model_dump(include={"width", "height"}) == {
        "width": 96, "height": 56}
    half = plan(init_size=(200, 100), width=64, **common)
    assert (half.plan.width, half.plan.height) == (64, 32)
    assert half.input_size == (64, 32)


def test_outpaint_plan_is_the_whole_canvas_and_the_input_is_the_inner_image() -> None:
    result = plan(task="outpaint", init_image=IMAGE, init_size=(64, 64), width=48, height=32,
                  outpaint={"left": 16, "right": 8, "top": 0, "bottom": 24})
    assert (result.plan.width, result.plan.height) == (48 + 24, 32 + 24)
    assert result.input_size == (48, 32)
    assert result.plan.strength == OUTPAINT_STRENGTH


def test_outpaint_reports_the_strength_it_overrides() -> None:
    result = plan(task="outpaint", init_image=IMAGE, init_size=(64, 64), strength=0.4,
                  outpaint={"left": 16})
    assert result.plan.strength == OUTPAINT_STRENGTH
    assert [w.field for w in result.warnings] == ["strength"]


def test_image_to_image_strength_defaults_and_must_leave_a_step() -> None:
    common = {"task": "image-to-image", "init_image": IMAGE, "init_size": (64, 64)}
    assert plan(**common).plan.strength == DEFAULT_STRENGTH
    err = refusal(steps=3, strength=0.2, **common)
    assert (err.field, err.code) == ("strength", "no_denoising_steps")


def test_strength_on_text_to_image_is_dropped_with_a_warning() -> None:
    result = plan(strength=0.5)
    assert result.plan.strength is None
    assert [w.field for w in result.warnings] == ["strength"]


def test_negative_prompt_is_kept_under_classifier_free_guidance() -> None:
    result = plan(negative_prompt="blurry", guidance_scale=5)
    assert result.plan.negative_prompt == "blurry" and result.warnings == []


def test_negative_prompt_is_dropped_when_guidance_is_off_and_the_job_says_so() -> None:
    result = plan(negative_prompt="blurry", guidance_scale=1)
    assert result.plan.negative_prompt is None
    [warning] = result.warnings
    assert warning.field == "negative_prompt" and "guidance_scale 1" in warning.message


def test_negative_prompt_is_refused_for_a_distilled_model_without_true_cfg() -> None:
    # No scale would make it count: the request was written for another kind of model.
    distilled = TINY.model_copy(update={"guidance": GuidanceKind.DISTILLED})
    error = refusal(spec=distilled, negative_prompt="blurry")
    assert error.field == "negative_prompt" and "distilled" in error.message


def test_scheduler_outside_the_models_family_is_refused_naming_the_field() -> None:
    flow = TINY.model_copy(update={"schedulers": ["flow_match_euler"],
                                   "default_scheduler": "flow_match_euler"})
    assert plan(flow).plan.scheduler == "flow_match_euler"
    err = refusal(spec=flow, scheduler="ddim")
    assert (err.field, err.code) == ("scheduler", "unsupported_scheduler")
    assert refusal(scheduler="flow_match_euler").field == "scheduler"


@pytest.mark.parametrize(
    ("fields", "field", "code"),
    [
        ({"task": "image-to-image"}, "init_image", "missing_input"),
        ({"task": "inpaint", "init_image": IMAGE, "init_size": (64, 64)}, "mask_image",
         "missing_input"),
        ({"init_image": IMAGE}, "init_image", "unexpected_input"),
        ({"mask_image": IMAGE}, "mask_image", "unexpected_input"),
        ({"task": "image-to-image", "init_image": IMAGE, "init_size": (64, 64),
          "mask_image": IMAGE}, "mask_image", "unexpected_input"),
        ({"task": "outpaint", "init_image": IMAGE, "init_size": (64, 64)}, "outpaint",
         "missing_input"),
        ({"task": "outpaint", "init_image": IMAGE, "init_size": (64, 64),
          "outpaint": {"left": 0}}, "outpaint", "missing_input"),
        ({"outpaint": {"left": 8}}, "outpaint", "unexpected_input"),
        ({"width": 4096}, "width", "size_too_large"),
        ({"width": 16}, "width", "size_too_small"),
        ({"height": 8}, "height", "size_too_small"),
        ({"task": "image-to-image", "init_image": IMAGE, "init_size": (16, 64)}, "init_image",
         "size_too_small"),
        ({"height": 4096}, "height", "size_too_large"),
        ({"task": "image-to-image", "init_image": IMAGE, "init_size": (2000, 64)}, "init_image",
         "size_too_large"),
        ({"task": "outpaint", "init_image": IMAGE, "init_size": (500, 64),
          "outpaint": {"left": 24}}, "outpaint", "size_too_large"),
    ],
)
def test_cross_field_rules_name_their_field(fields: dict, field: str, code: str) -> None:
    err = refusal(**fields)
    assert (err.field, err.code) == (field, code), err.message


def test_a_task_the_model_does_not_list_is_refused() -> None:
    text_only = TINY.model_copy(update={"tasks": [Task.TEXT_TO_IMAGE]})
    err = refusal(spec=text_only, task="inpaint", init_image=IMAGE, mask_image=IMAGE,
                  init_size=(64, 64))
    assert (err.field, err.code) == ("task", "unsupported_task")


# -- upscale ---------------------------------------------------------------------------

UPSCALER = BUILTIN_MODELS[EMOJI_UPSCALER]
X4 = ModelSpec(name="x4", source="/models/x4", tasks=[Task.UPSCALE], scales=[4],
               default_noise_level=20, max_noise_level=350, tile_size=128, tile_overlap=32,
               max_width=2048, max_height=2048)
LATENT_X2 = ModelSpec(name="x2", source="/models/x2", tasks=[Task.UPSCALE], scales=[2, 4],
                      schedulers=["euler"], default_scheduler="euler")


def upscale(spec: ModelSpec = UPSCALER, init_size: tuple[int, int] = (64, 64),
            **fields: object) -> PlannedJob:
    request = GenerationRequest.model_validate(
        {"task": "upscale", "init_image": IMAGE, **fields})
    return plan_job(request, spec, init_size=init_size, random_seed=5)


def upscale_refusal(**kwargs: object) -> PlanError:
    with pytest.raises(PlanError) as caught:
        upscale(**kwargs)  # type: ignore[arg-type]
    return caught.value


def test_upscale_output_is_the_input_times_the_models_scale_with_its_defaults() -> None:
    result = upscale()
    p = result.plan
    assert (p.task, p.model, p.scale, p.width, p.height) == (Task.UPSCALE, EMOJI_UPSCALER, 2,
                                                             128, 128)
    assert result.input_size == (64, 64)
    assert (p.steps, p.noise_level, p.scheduler) == (
        UPSCALER.default_steps, UPSCALER.default_noise_level, UPSCALER.default_scheduler)
    assert p.prompt == "" and p.strength is None and p.tile is None and p.seeds == [5]


def test_upscale_input_is_run_at_a_multiple_of_8_and_a_prompt_is_kept() -> None:
    result = upscale(X4, init_size=(100, 60), prompt="a fox", noise_level=0, num_images=2)
    assert result.input_size == (96, 56)
    assert (result.plan.width, result.plan.height) == (384, 224)
    assert result.plan.prompt == "a fox" and result.plan.noise_level == 0
    assert result.plan.seeds == [5, 6]


def test_inputs_larger_than_the_tile_are_tiled_with_the_models_overlap() -> None:
    assert upscale(X4, init_size=(128, 128)).plan.tile is None
    tiled = upscale(X4, init_size=(200, 96)).plan.tile
    assert tiled is not None and (tiled.size, tiled.overlap) == (128, 32)
    assert upscale(init_size=(72, 16)).plan.tile is not None  # either side past the tile


def test_the_scale_must_be_one_the_model_serves() -> None:
    assert upscale(LATENT_X2, scale=4).plan.scale == 4
    assert upscale(LATENT_X2).plan.scale == 2  # the model's first
    error = upscale_refusal(scale=4)
    assert (error.field, error.code) == ("scale", "unsupported_scale")
    assert "scales: 2" in error.message


def test_the_noise_level_stays_within_the_models_bounds() -> None:
    error = upscale_refusal(spec=X4, noise_level=351)
    assert (error.field, error.code) == ("noise_level", "noise_level_too_high")
    # A model that takes no noise level refuses one rather than ignoring it.
    error = upscale_refusal(spec=LATENT_X2, noise_level=10)
    assert (error.field, error.code) == ("noise_level", "unexpected_input")
    assert upscale(LATENT_X2).plan.noise_level is None


def test_the_upscaled_size_must_fit_the_models_maximum() -> None:
    error = upscale_refusal(init_size=(264, 64))
    assert (error.field, error.code) == ("init_image", "size_too_large")
    assert "264x64 upscaled 2x" in error.message
    assert upscale_refusal(init_size=(1100, 1000), spec=X4).code == "size_too_large"
    assert upscale_refusal(init_size=(8, 8), spec=X4).code == "size_too_small"


@pytest.mark.parametrize(("field", "value"), [
    ("width", 128), ("height", 128), ("strength", 0.5), ("mask_image", IMAGE),
    ("outpaint", {"left": 8}),
])
def test_fields_upscale_does_not_use_are_refused(field: str, value: object) -> None:
    error = upscale_refusal(**{field: value})
    assert (error.field, error.code) == (field, "unexpected_input")


def test_upscale_needs_an_init_image_and_an_upscale_model() -> None:
    request = GenerationRequest.model_validate({"task": "upscale"})
    with pytest.raises(PlanError) as caught:
        plan_job(request, UPSCALER, init_size=None, random_seed=1)
    assert caught.value.field == "init_image"
    assert refusal(task="upscale", init_image=IMAGE, init_size=(64, 64)).field == "task"
    assert upscale_refusal(spec=BUILTIN_MODELS[EMOJI]).field == "task"


def test_scale_and_noise_level_are_refused_on_other_tasks() -> None:
    assert refusal(scale=2).field == "scale"
    assert refusal(noise_level=2).field == "noise_level"


def test_only_upscale_runs_without_a_prompt() -> None:
    request = GenerationRequest.model_validate({"steps": 2})
    with pytest.raises(PlanError) as caught:
        plan_job(request, TINY, init_size=None, random_seed=1)
    assert (caught.value.field, caught.value.code) == ("prompt", "missing_input")


def test_upscale_model_specs_are_checked() -> None:
    with pytest.raises(ValueError, match="scales"):
        ModelSpec(name="u", source="/u", tasks=[Task.UPSCALE])
    with pytest.raises(ValueError, match="alone"):
        ModelSpec(name="u", source="/u", tasks=[Task.UPSCALE, Task.TEXT_TO_IMAGE], scales=[2])
    with pytest.raises(ValueError, match="half"):
        ModelSpec(name="u", source="/u", tasks=[Task.UPSCALE], scales=[2], tile_size=64,
                  tile_overlap=40)
    assert Task.UPSCALE not in ModelSpec(name="sd", source="/sd").tasks
