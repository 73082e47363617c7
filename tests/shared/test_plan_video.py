"""shared.plan for text-to-video: frames, fps, the pixel cap, size multiples and output
formats decided at submit, each refusal naming its field."""

from __future__ import annotations

import pytest

from shared.model_registry import BUILTIN_MODELS, TINY_RANDOM, ModelSpec, family_defaults
from shared.plan import PlanError, PlannedJob, plan_job
from shared.schemas import GenerationRequest, OutputFormat, Task

VIDEO = ModelSpec(name="tiny-video", source="/models/tiny-video", tasks=[Task.TEXT_TO_VIDEO],
                  default_width=64, default_height=64, min_width=32, min_height=32,
                  max_width=256, max_height=256, default_steps=2, default_frames=8,
                  min_frames=2, max_frames=16, default_fps=8, max_fps=24)
CAP = 16 * 64 * 64


def plan(spec: ModelSpec = VIDEO, **fields: object) -> PlannedJob:
    request = GenerationRequest.model_validate(
        {"prompt": "a red fox", "task": "text-to-video", **fields})
    return plan_job(request, spec, init_size=None, random_seed=7, max_video_pixels=CAP)


def refusal(spec: ModelSpec = VIDEO, **fields: object) -> PlanError:
    with pytest.raises(PlanError) as caught:
        plan(spec, **fields)
    return caught.value


def test_video_defaults_come_from_the_model() -> None:
    p = plan().plan
    assert (p.task, p.num_frames, p.fps, p.width, p.height) == (Task.TEXT_TO_VIDEO, 8, 8, 64, 64)
    # No format named: MP4, not the image default PNG.
    assert p.output_format is OutputFormat.MP4
    assert p.strength is None and p.seeds == [7]


def test_num_images_is_the_number_of_videos_each_with_its_seed() -> None:
    p = plan(num_images=3, seed=40, num_frames=4, fps=12).plan
    assert (p.num_images, p.seeds, p.num_frames, p.fps) == (3, [40, 41, 42], 4, 12)


@pytest.mark.parametrize("fmt", ["mp4", "webp", "gif"])
def test_video_formats_are_accepted(fmt: str) -> None:
    assert plan(output_format=fmt).plan.output_format.value == fmt


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_a_still_format_for_a_video_is_refused(fmt: str) -> None:
    error = refusal(output_format=fmt)
    assert (error.field, error.code) == ("output_format", "unsupported_output_format")


@pytest.mark.parametrize("fmt", ["gif", "mp4"])
def test_a_video_format_for_an_image_is_refused(fmt: str) -> None:
    request = GenerationRequest.model_validate({"prompt": "x", "output_format": fmt})
    with pytest.raises(PlanError) as caught:
        plan_job(request, BUILTIN_MODELS[TINY_RANDOM], init_size=None, random_seed=1)
    assert (caught.value.field, caught.value.code) == ("output_format", "unsupported_output_format")


@pytest.mark.parametrize(("fields", "field", "code"), [
    ({"num_frames": 17}, "num_frames", "frames_out_of_range"),
    ({"num_frames": 1}, "num_frames", "frames_out_of_range"),
    ({"fps": 25}, "fps", "fps_too_high"),
    # 16 frames of 128x64 are twice the cap.
    ({"num_frames": 16, "width": 128}, "num_frames", "video_too_large"),
    ({"init_image": "never decoded"}, "init_image", "unexpected_input"),
    ({"width": 264}, "width", "size_too_large"),
])
def test_video_bounds_are_refused_naming_the_field(fields: dict, field: str, code: str) -> None:
    error = refusal(**fields)
    assert (error.field, error.code) == (field, code), error.message


def test_the_pixel_cap_allows_exactly_its_size() -> None:
    assert plan(num_frames=16).plan.num_frames == 16
    request = GenerationRequest.model_validate(
        {"prompt": "x", "task": "text-to-video", "num_frames": 16, "width": 128})
    # No cap given (None): any size within the model's bounds.
    assert plan_job(request, VIDEO, init_size=None, random_seed=1).plan.width == 128


def test_a_model_size_multiple_is_enforced() -> None:
    patched = VIDEO.model_copy(update={"size_multiple": 16})
    error = refusal(patched, width=72)
    assert (error.field, error.code) == ("width", "size_not_multiple")
    assert plan(patched, width=80).plan.width == 80


@pytest.mark.parametrize("name", ["num_frames", "fps"])
def test_frames_and_fps_on_an_image_task_are_refused(name: str) -> None:
    request = GenerationRequest.model_validate({"prompt": "x", name: 4})
    with pytest.raises(PlanError) as caught:
        plan_job(request, BUILTIN_MODELS[TINY_RANDOM], init_size=None, random_seed=1)
    assert (caught.value.field, caught.value.code) == (name, "unexpected_input")


def test_an_image_model_does_not_serve_video() -> None:
    error = refusal(BUILTIN_MODELS[TINY_RANDOM])
    assert (error.field, error.code) == ("task", "unsupported_task")


def test_a_negative_prompt_follows_the_image_rules() -> None:
    assert plan(negative_prompt="blur", guidance_scale=5.0).plan.negative_prompt == "blur"
    dropped = plan(negative_prompt="blur", guidance_scale=1.0)
    assert dropped.plan.negative_prompt is None
    assert [w.field for w in dropped.warnings] == ["negative_prompt"]


def test_an_animatediff_folder_is_a_video_model(tmp_path) -> None:
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "model_index.json").write_text('{"_class_name": "AnimateDiffPipeline"}')
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(
        '{"_class_name": "DDIMScheduler"}')
    spec = ModelSpec(name="ad", source=str(tmp_path), **family_defaults(str(tmp_path)))
    assert spec.tasks == [Task.TEXT_TO_VIDEO] and spec.serves_video
    info = spec.info()
    assert (info.default_frames, info.max_frames, info.default_fps) == (16, 32, 8)
    # Image models show no frame bounds.
    assert BUILTIN_MODELS[TINY_RANDOM].info().max_frames is None
    assert Task.TEXT_TO_VIDEO not in BUILTIN_MODELS[TINY_RANDOM].tasks


def test_inconsistent_frame_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="default_frames"):
        ModelSpec(name="x", source="/x", default_frames=40, max_frames=32)


def test_a_cogvideox_folder_makes_8k_plus_1_frames_at_multiples_of_16(tmp_path) -> None:
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "model_index.json").write_text('{"_class_name": "CogVideoXPipeline"}')
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(
        '{"_class_name": "CogVideoXDPMScheduler"}')
    spec = ModelSpec(name="cog", source=str(tmp_path), **family_defaults(str(tmp_path)))
    assert (spec.default_frames, spec.frame_step, spec.size_multiple) == (49, 8, 16)
    # CogVideoX-5b ships its DPM sampler: that is its default.
    assert spec.default_scheduler == "dpmpp_2m" and spec.info().frame_step == 8
    p = plan(spec, width=48, height=48, num_frames=17).plan
    assert (p.num_frames, p.fps, p.scheduler) == (17, 8, "dpmpp_2m")
    error = refusal(spec, num_frames=16, width=64, height=64)
    assert (error.field, error.code) == ("num_frames", "frames_not_allowed")
    assert "e.g. 9" in error.message
    error = refusal(spec, width=40, height=32, num_frames=9)
    assert (error.field, error.code) == ("width", "size_not_multiple")
