"""shared.plan against each model family's spec: sizes to the family's multiple, its
schedulers, its kind of guidance (CFG, Flux's distilled guidance and true CFG, none) and
the SDXL base → refiner handoff, each refusal naming its field."""

from __future__ import annotations

import pytest

from shared.model_registry import FAMILY_DEFAULTS, ModelFamily, ModelSpec, family_defaults
from shared.plan import PlanError, PlannedJob, plan_job
from shared.schemas import GenerationRequest, GuidanceKind

IMAGE = "<base64 never decoded by the plan>"


def spec(family: ModelFamily, name: str | None = None, **overrides: object) -> ModelSpec:
    fields = {**FAMILY_DEFAULTS[family], **overrides}
    return ModelSpec(name=name or family.value, source="org/x", family=family, **fields)


SD15, SDXL, SD3, FLUX = (spec(f) for f in (ModelFamily.SD1, ModelFamily.SDXL,
                                           ModelFamily.SD3, ModelFamily.FLUX))
REFINER = spec(ModelFamily.SDXL_REFINER, "refiner")
SCHNELL = spec(ModelFamily.FLUX, "schnell", guidance=GuidanceKind.NONE,
               default_guidance_scale=0.0, default_steps=4)


def plan(model: ModelSpec, init_size: tuple[int, int] | None = None,
         refiner_spec: ModelSpec | None = None, **fields: object) -> PlannedJob:
    request = GenerationRequest.model_validate({"prompt": "a red fox", **fields})
    return plan_job(request, model, init_size=init_size, random_seed=1,
                    refiner_spec=refiner_spec)


def refusal(model: ModelSpec, **fields: object) -> PlanError:
    with pytest.raises(PlanError) as caught:
        plan(model, **fields)  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize(("model", "size", "steps", "scheduler", "guidance"), [
    (SD15, 512, 30, "dpmpp_2m", 7.5), (SDXL, 1024, 30, "dpmpp_2m", 5.0),
    (SD3, 1024, 28, "flow_match_euler", 7.0), (FLUX, 1024, 28, "flow_match_euler", 3.5),
    (SCHNELL, 1024, 4, "flow_match_euler", 0.0),
])
def test_defaults_are_the_familys(model: ModelSpec, size: int, steps: int, scheduler: str,
                                  guidance: float) -> None:
    p = plan(model).plan
    assert (p.width, p.height, p.steps, p.scheduler, p.guidance_scale) == (
        size, size, steps, scheduler, guidance)
    assert p.guidance is model.guidance


@pytest.mark.parametrize("model", [SD3, FLUX])
def test_sizes_off_the_16_multiple_are_refused_naming_the_field(model: ModelSpec) -> None:
    for field in ("width", "height"):
        error = refusal(model, **{field: 520})
        assert (error.field, error.code) == (field, "size_not_multiple")
        assert "multiple of 16" in error.message
    assert plan(SD15, width=520).plan.width == 520  # the UNet models take multiples of 8


def test_image_task_sizes_round_down_to_the_familys_multiple() -> None:
    common = {"task": "image-to-image", "init_image": IMAGE, "init_size": (100, 70)}
    assert (plan(FLUX, **common).input_size) == (96, 64)  # type: ignore[arg-type]
    assert (plan(SD15, **common).input_size) == (96, 64)  # type: ignore[arg-type]
    # width 96 keeps the image's aspect: 67 → 64 on Flux, 64 on SD too (multiple of 8).
    assert plan(FLUX, width=96, **common).plan.height == 64  # type: ignore[arg-type]
    assert plan(FLUX, task="image-to-image", init_image=IMAGE, init_size=(200, 140),
                width=96).plan.height == 64
    assert plan(SD15, task="image-to-image", init_image=IMAGE, init_size=(200, 140),
                width=96).plan.height == 64


def test_an_outpaint_canvas_off_the_multiple_is_refused_naming_outpaint() -> None:
    error = refusal(FLUX, task="outpaint", init_image=IMAGE, init_size=(64, 64),
                    outpaint={"left": 8})
    assert (error.field, error.code) == ("outpaint", "size_not_multiple")
    assert plan(FLUX, task="outpaint", init_image=IMAGE, init_size=(64, 64),
                outpaint={"left": 8, "right": 8}).plan.width == 80


@pytest.mark.parametrize(("model", "refused"), [(SD3, "ddim"), (FLUX, "euler"),
                                                (FLUX, "flow_match_heun"),
                                                (SDXL, "flow_match_euler")])
def test_a_scheduler_of_another_family_is_refused(model: ModelSpec, refused: str) -> None:
    assert refusal(model, scheduler=refused).field == "scheduler"


def test_flux_negative_prompt_runs_with_true_cfg_and_is_dropped_without() -> None:
    p = plan(FLUX, negative_prompt="blurry", true_cfg_scale=4.0).plan
    assert (p.negative_prompt, p.true_cfg_scale, p.guidance) == (
        "blurry", 4.0, GuidanceKind.DISTILLED)
    dropped = plan(FLUX, negative_prompt="blurry")
    assert dropped.plan.negative_prompt is None and dropped.plan.true_cfg_scale is None
    assert [w.field for w in dropped.warnings] == ["negative_prompt"]
    assert "true_cfg_scale" in dropped.warnings[0].message
    alone = plan(FLUX, true_cfg_scale=4.0)
    assert alone.plan.true_cfg_scale is None
    assert [w.field for w in alone.warnings] == ["true_cfg_scale"]


def test_true_cfg_scale_is_refused_where_the_model_has_none() -> None:
    for model in (SD15, SDXL, SD3):
        error = refusal(model, true_cfg_scale=3.0, negative_prompt="x")
        assert (error.field, error.code) == ("true_cfg_scale", "unsupported_guidance")


def test_guidance_is_checked_against_its_kind() -> None:
    assert refusal(FLUX, guidance_scale=12).field == "guidance_scale"  # distilled: 1–10
    assert plan(FLUX, guidance_scale=5).plan.guidance_scale == 5
    error = refusal(SCHNELL, guidance_scale=3.5)
    assert (error.field, error.code) == ("guidance_scale", "unsupported_guidance")
    assert plan(SCHNELL, guidance_scale=0).plan.guidance_scale == 0  # what it runs anyway
    assert plan(SD15, guidance_scale=30).plan.guidance_scale == 30


def test_schnell_reads_a_negative_prompt_through_true_cfg_only() -> None:
    p = plan(SCHNELL, negative_prompt="blurry", true_cfg_scale=2.0).plan
    assert (p.negative_prompt, p.true_cfg_scale, p.guidance) == ("blurry", 2.0, GuidanceKind.NONE)


def test_a_refiner_model_is_image_to_image_with_its_aesthetic_scores() -> None:
    assert refusal(REFINER).field == "task"
    p = plan(REFINER, task="image-to-image", init_image=IMAGE, init_size=(64, 64)).plan
    assert (p.aesthetic_score, p.negative_aesthetic_score) == (6.0, 2.5)
    assert plan(SDXL).plan.aesthetic_score is None


def test_refiner_handoff_is_planned_for_sdxl_base_text_to_image() -> None:
    p = plan(SDXL, refiner_spec=REFINER, steps=8,
             refiner={"model": "refiner", "switch_at": 0.75}).plan
    assert p.refiner is not None
    assert (p.refiner.model, p.refiner.switch_at, p.refiner.aesthetic_score) == (
        "refiner", 0.75, 6.0)


@pytest.mark.parametrize(("model", "refiner_spec", "fields", "field"), [
    (SD15, REFINER, {}, "refiner"),  # only SDXL base hands over
    (SDXL, SDXL, {}, "refiner.model"),  # not a refiner
    (SDXL, None, {}, "refiner.model"),  # unknown
    (SDXL, REFINER, {"task": "image-to-image", "init_image": IMAGE}, "refiner"),
    (SDXL, REFINER, {"steps": 2, "refiner": {"model": "refiner", "switch_at": 0.3}},
     "refiner.switch_at"),  # int(2 * 0.3) = 0 base steps
])
def test_a_refiner_that_cannot_run_is_refused_naming_the_field(
    model: ModelSpec, refiner_spec: ModelSpec | None, fields: dict, field: str
) -> None:
    body = {"refiner": {"model": "refiner"}, **fields}
    init = (64, 64) if "init_image" in body else None
    with pytest.raises(PlanError) as caught:
        plan(model, init_size=init, refiner_spec=refiner_spec, **body)
    assert caught.value.field == field


def test_a_hub_id_takes_its_familys_defaults_when_named() -> None:
    defaults = family_defaults("stabilityai/stable-diffusion-xl-base-1.0", "sdxl")
    assert defaults["family"] is ModelFamily.SDXL and defaults["default_width"] == 1024
    assert family_defaults("org/unknown") == {"family": ModelFamily.OTHER}
