"""shared.adapters and the plan's adapter rules: which LoRA files and ControlNet folders
are offered, what fits which model (from file headers and configs, no torch), and every
refusal naming its field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from safetensors.numpy import save_file

from shared.adapters import Adapters, read_safetensors_header, scan_loras
from shared.model_registry import BUILTIN_MODELS, EMOJI, TINY_RANDOM, ModelRegistry, ModelSpec
from shared.plan import PlanError, plan_job
from shared.schemas import GenerationRequest
from shared.settings import Settings

TINY = BUILTIN_MODELS[TINY_RANDOM]
KEY = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"
KOHYA_KEY = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight"
TINY_UNET = {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 32,
             "addition_embed_type": None, "block_out_channels": [32, 64], "in_channels": 4}
XL_UNET = {**TINY_UNET, "cross_attention_dim": 64, "addition_embed_type": "text_time"}


def save_lora(folder: Path, name: str, width: int, key: str = KEY) -> Path:
    """A LoRA file with the one tensor whose shape tells its UNet (real safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file({key: np.ones((4, width), np.float32),
               key.replace("lora_A", "lora_B").replace("lora_down", "lora_up"):
                   np.ones((width, 4), np.float32)}, str(path))
    return path


def save_config(folder: Path, config: dict, name: str = "config.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(config))
    return folder


@pytest.fixture
def world(tmp_path: Path) -> tuple[Adapters, ModelSpec, dict]:
    loras = tmp_path / "loras"
    save_lora(loras, "ink", 32)
    save_lora(loras, "xl-style", 64, KOHYA_KEY)
    (loras / "notes.txt").write_text("not a LoRA")
    (loras / "broken.safetensors").write_bytes(b"\x01")
    save_lora(loras, "has.dots", 32)
    xl = tmp_path / "tiny-xl"
    save_config(xl, {"_class_name": "StableDiffusionXLPipeline"}, "model_index.json")
    save_config(xl / "unet", XL_UNET)
    models = {
        "edges": str(save_config(tmp_path / "edges", {**TINY_UNET,
                                                      "_class_name": "ControlNetModel"})),
        "xl-edges": str(save_config(tmp_path / "xl-edges", {**XL_UNET,
                                                            "_class_name": "ControlNetModel"})),
        "tiny-xl": {"source": str(xl), "default_width": 64, "default_height": 64},
    }
    adapters = Adapters.from_sources(loras, models)
    xl_spec = ModelSpec(name="tiny-xl", source=str(xl), default_width=64, default_height=64)
    return adapters, xl_spec, models


def plan(adapters: Adapters, spec: ModelSpec = TINY, **fields: object):
    request = GenerationRequest.model_validate({"prompt": "a red fox", **fields})
    return plan_job(request, spec, init_size=None, random_seed=1, adapters=adapters)


def refusal(adapters: Adapters, spec: ModelSpec = TINY, **fields: object) -> PlanError:
    with pytest.raises(PlanError) as caught:
        plan(adapters, spec, **fields)
    return caught.value


def cn(model: str = "edges", **fields: object) -> dict:
    return {"model": model, "image": "<base64, decoded by the API>", **fields}


def test_loras_are_the_readable_safetensors_files_by_stem(world) -> None:
    adapters, _, _ = world
    assert sorted(adapters.loras) == ["ink", "xl-style"]
    assert adapters.loras["ink"].cross_attention_dim == 32
    assert adapters.loras["xl-style"].cross_attention_dim == 64  # kohya's layout


def test_no_lora_dir_offers_none(tmp_path: Path) -> None:
    assert scan_loras(None) == {} and scan_loras(tmp_path / "missing") == {}


def test_header_is_read_without_the_tensors(tmp_path: Path) -> None:
    header = read_safetensors_header(save_lora(tmp_path, "ink", 32))
    assert header[KEY]["shape"] == [4, 32]


def test_controlnet_folders_are_control_models_not_generation_models(world) -> None:
    adapters, _, models = world
    assert sorted(adapters.controlnets) == ["edges", "xl-edges"]
    assert adapters.controlnets["xl-edges"].family == "SDXL"
    registry = ModelRegistry.from_settings(Settings(models=models))
    assert "edges" not in registry.names() and "tiny-xl" in registry.names()


def test_each_model_lists_what_fits_it(world) -> None:
    adapters, xl_spec, _ = world
    assert adapters.loras_for(TINY) == ["ink"]
    assert adapters.controlnets_for(TINY) == ["edges"]
    assert adapters.loras_for(xl_spec) == ["xl-style"]
    assert adapters.controlnets_for(xl_spec) == ["xl-edges"]
    # The emoji model's UNet (384-wide cross-attention) fits none of them.
    assert adapters.loras_for(BUILTIN_MODELS[EMOJI]) == []


def test_a_model_whose_unet_cannot_be_read_here_leaves_the_check_to_the_worker(world) -> None:
    adapters, _, _ = world
    hub = ModelSpec(name="hub", source="org/model")
    assert adapters.loras_for(hub) == ["ink", "xl-style"]


def test_plan_records_loras_and_controls(world) -> None:
    adapters, _, _ = world
    result = plan(adapters, loras=[{"name": "ink", "scale": 0.6}],
                  control=[cn(scale=0.5, start=0.2, end=0.8)]).plan
    assert [(lora.name, lora.scale) for lora in result.loras] == [("ink", 0.6)]
    assert [(c.model, c.scale, c.start, c.end) for c in result.control] == [
        ("edges", 0.5, 0.2, 0.8)]
    # The image is an input of the job, not part of its plan.
    assert "image" not in result.control[0].model_dump()


@pytest.mark.parametrize(("fields", "field", "code"), [
    ({"loras": [{"name": "nope"}]}, "loras.0.name", "unknown_lora"),
    ({"loras": [{"name": "ink"}, {"name": "ink"}]}, "loras.1.name", "duplicate_lora"),
    ({"loras": [{"name": "xl-style"}]}, "loras.0.name", "incompatible_lora"),
    ({"control": [cn("nope")]}, "control.0.model", "unknown_controlnet"),
    ({"control": [cn("xl-edges")]}, "control.0.model", "incompatible_controlnet"),
    ({"control": [cn(), cn()]}, "control.1.model", "duplicate_controlnet"),
    ({"control": [cn(start=0.5, end=0.5)]}, "control.0.end", "empty_control_range"),
    ({"control": [cn(start=0.9, end=0.1)]}, "control.0.end", "empty_control_range"),
])
def test_plan_refuses_naming_the_field(world, fields, field, code) -> None:
    adapters, _, _ = world
    error = refusal(adapters, **fields)
    assert (error.field, error.code) == (field, code)


def test_wrong_family_is_refused_both_ways(world) -> None:
    adapters, xl_spec, _ = world
    lora = refusal(adapters, xl_spec, loras=[{"name": "ink"}])
    assert lora.field == "loras.0.name" and "SDXL" in lora.message
    control = refusal(adapters, xl_spec, control=[cn("edges")])
    assert control.field == "control.0.model" and "SDXL" in control.message


@pytest.mark.parametrize(("fields", "where"), [
    ({"loras": [{"name": "ink", "scale": 2.5}]}, ("loras", 0, "scale")),
    ({"loras": [{"name": "ink", "scale": "1"}]}, ("loras", 0, "scale")),
    ({"loras": [{"name": "ink", "scale": True}]}, ("loras", 0, "scale")),
    ({"loras": [{"name": "ink", "weight": 1}]}, ("loras", 0, "weight")),
    ({"loras": [{"name": f"l{i}"} for i in range(5)]}, ("loras",)),
    ({"control": [cn(scale=-0.1)]}, ("control", 0, "scale")),
    ({"control": [cn(end=1.5)]}, ("control", 0, "end")),
    ({"control": [{"model": "edges"}]}, ("control", 0, "image")),
    ({"control": [cn() for _ in range(4)]}, ("control",)),
])
def test_request_bounds(fields, where) -> None:
    with pytest.raises(ValidationError) as caught:
        GenerationRequest.model_validate({"prompt": "p", **fields})
    assert caught.value.errors()[0]["loc"] == where


def test_without_adapters_any_named_lora_is_unknown() -> None:
    with pytest.raises(PlanError) as caught:
        plan_job(GenerationRequest(prompt="p", loras=[{"name": "ink"}]), TINY,  # type: ignore[list-item]
                 init_size=None, random_seed=1)
    assert caught.value.field == "loras.0.name" and "none" in caught.value.message


def test_transformer_families_take_no_unet_lora_and_no_controlnet(world) -> None:
    from shared.model_registry import FAMILY_DEFAULTS, ModelFamily

    adapters, _, _ = world
    flux = ModelSpec(name="flux", source="org/flux", family=ModelFamily.FLUX,
                     **FAMILY_DEFAULTS[ModelFamily.FLUX])  # type: ignore[arg-type]
    lora = refusal(adapters, flux, loras=[{"name": "ink"}], width=1024, height=1024)
    assert (lora.field, lora.code) == ("loras.0.name", "incompatible_lora")
    assert "transformer" in lora.message
    control = refusal(adapters, flux, control=[cn()], width=1024, height=1024)
    assert (control.field, control.code) == ("control.0.model", "incompatible_controlnet")
    assert adapters.loras_for(flux) == [] and adapters.controlnets_for(flux) == []


def test_a_single_file_checkpoint_is_judged_by_its_config_folder(world, tmp_path) -> None:
    adapters, xl_spec, _ = world
    from shared.model_registry import ModelFamily

    single = ModelSpec(name="xl-file", source=str(tmp_path / "xl.safetensors"),
                       config=xl_spec.source, family=ModelFamily.SDXL, default_width=64,
                       default_height=64)
    assert adapters.loras_for(single) == ["xl-style"]
    assert adapters.controlnets_for(single) == ["xl-edges"]


def test_batch_signature_holds_the_loras_and_control_jobs_run_alone(world) -> None:
    from shared.batching import batch_signature

    adapters, _, _ = world
    ink = plan(adapters, loras=[{"name": "ink", "scale": 0.5}]).plan
    assert batch_signature(ink) == batch_signature(
        plan(adapters, loras=[{"name": "ink", "scale": 0.5}], prompt="another").plan)
    assert batch_signature(ink) != batch_signature(plan(adapters).plan)
    assert batch_signature(ink) != batch_signature(
        plan(adapters, loras=[{"name": "ink", "scale": 0.6}]).plan)
    assert batch_signature(plan(adapters, control=[cn()]).plan) is None
