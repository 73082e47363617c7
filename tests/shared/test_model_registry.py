"""shared.model_registry: LATENTD_MODELS parsing, refusals naming the setting, family defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.model_registry import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    EMOJI,
    EMOJI_UPSCALER,
    GuidanceKind,
    ModelRegistry,
    UnknownModel,
    queue_for_model,
)
from shared.schemas import NOISE_SCHEDULERS, Task
from shared.settings import Settings


def registry(**settings: object) -> ModelRegistry:
    return ModelRegistry.from_settings(Settings(**settings))  # type: ignore[arg-type]


def test_the_default_model_is_the_embedded_one() -> None:
    reg = registry()
    assert reg.default_model == DEFAULT_MODEL == EMOJI
    assert reg.get(None).name == EMOJI


def test_a_source_string_and_an_object_with_bounds_both_register() -> None:
    reg = registry(models={"a": "/nowhere/a", "b": {"source": "org/b", "max_width": 2048,
                                                    "default_steps": 12}})
    assert reg.get("a").source == "/nowhere/a"
    assert reg.get("a").schedulers == list(NOISE_SCHEDULERS)
    assert (reg.get("b").max_width, reg.get("b").default_steps) == (2048, 12)
    with pytest.raises(UnknownModel):
        reg.get("c")


def test_an_unknown_key_is_refused_naming_the_model_and_the_key() -> None:
    with pytest.raises(ValueError, match=r"LATENTD_MODELS\['a'\].*max_widht"):
        registry(models={"a": {"source": "org/a", "max_widht": 10}})


def test_an_inconsistent_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="default_scheduler 'ddim' is not in schedulers"):
        registry(models={"a": {"source": "org/a", "schedulers": ["euler"],
                               "default_scheduler": "ddim"}})


def test_an_unregistered_default_or_worker_model_names_the_setting() -> None:
    with pytest.raises(ValueError,
                       match="LATENTD_DEFAULT_MODEL 'nope'.*known: emoji, emoji-upscaler\\)"):
        registry(default_model="nope")
    with pytest.raises(ValueError, match="LATENTD_WORKER_MODELS names 'nope'"):
        registry(worker_models="emoji,nope")


def _folder(root: Path, pipeline: str, scheduler: str) -> Path:
    (root / "scheduler").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": scheduler}))
    return root


def test_a_flow_matching_folder_gets_its_own_scheduler_and_flux_distilled_guidance(
    tmp_path: Path,
) -> None:
    flux = _folder(tmp_path / "flux", "FluxPipeline", "FlowMatchEulerDiscreteScheduler")
    sd3 = _folder(tmp_path / "sd3", "StableDiffusion3Pipeline", "FlowMatchEulerDiscreteScheduler")
    sd15 = _folder(tmp_path / "sd15", "StableDiffusionPipeline", "PNDMScheduler")
    reg = registry(models={"flux": str(flux), "sd3": str(sd3), "sd15": str(sd15),
                           "pinned": {"source": str(flux), "guidance": "none"}})
    assert reg.get("flux").schedulers == ["flow_match_euler", "flow_match_dpmpp_2m"]
    assert reg.get("flux").guidance is GuidanceKind.DISTILLED
    assert reg.get("sd3").default_scheduler == "flow_match_euler"
    assert reg.get("sd3").guidance is GuidanceKind.CLASSIFIER_FREE
    assert reg.get("sd15").schedulers == list(NOISE_SCHEDULERS)
    assert reg.get("pinned").guidance is GuidanceKind.NONE  # the setting wins


def test_each_model_has_its_own_queue() -> None:
    assert queue_for_model("emoji") != queue_for_model("tiny-random")


def test_the_test_model_is_offered_only_where_the_settings_name_it() -> None:
    assert "tiny-random" not in registry().names()
    assert "tiny-random" in registry(default_model="tiny-random").names()
    assert "tiny-random" in registry(worker_models="emoji,tiny-random").names()


def test_family_sizes_and_tasks_come_from_the_folders_configs(tmp_path: Path) -> None:
    sdxl = _folder(tmp_path / "sdxl", "StableDiffusionXLPipeline", "EulerDiscreteScheduler")
    (sdxl / "unet").mkdir()
    (sdxl / "unet" / "config.json").write_text(json.dumps({"sample_size": 128,
                                                           "in_channels": 9}))
    (sdxl / "vae").mkdir()
    (sdxl / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [1, 2, 3, 4]}))
    refiner = _folder(tmp_path / "refiner", "StableDiffusionXLImg2ImgPipeline",
                      "EulerDiscreteScheduler")
    index = json.loads((refiner / "model_index.json").read_text())
    (refiner / "model_index.json").write_text(json.dumps(
        {**index, "requires_aesthetics_score": True}))
    reg = registry(models={"inpaint": str(sdxl), "refiner": str(refiner)})
    inpaint = reg.get("inpaint")
    assert (inpaint.family, inpaint.default_width, inpaint.max_width) == ("sdxl", 1024, 2048)
    assert inpaint.tasks == ["inpaint", "outpaint"]  # a 9-channel inpainting UNet
    assert reg.get("refiner").family == "sdxl-refiner"
    assert reg.get("refiner").tasks == ["image-to-image"]
def test_a_builtin_under_another_name_starts_from_its_spec() -> None:
    spec = registry(models={"big-tiles": {"source": "builtin:emoji-upscaler",
                                          "tile_size": 32, "tile_overlap": 8}}).get("big-tiles")
    assert spec.tasks == [Task.UPSCALE] and spec.scales == [2]
    assert (spec.tile_size, spec.tile_overlap) == (32, 8)
    assert spec.default_steps == BUILTIN_MODELS[EMOJI_UPSCALER].default_steps
