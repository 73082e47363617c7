"""Model sources → pipelines: the built-in tiny model, local directories, hub ids offline."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from shared.model_registry import BUILTIN_MODELS, TINY_RANDOM, ModelSpec
from shared.schemas import Task
from shared.settings import Settings
from worker.pipelines import (
    ModelLoadError,
    build_byte_level_clip_tokenizer,
    build_tiny_random_pipeline,
    load_pipeline,
)

SETTINGS = Settings(torch_threads=1)


def render(pipe, seed: int = 0) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe("a cat", num_inference_steps=2, height=64, width=64, generator=generator,
                output_type="np").images


def test_image_variants_share_the_text_to_image_weights(tiny_model) -> None:
    for derived in (tiny_model.image_to_image, tiny_model.inpaint):
        assert derived is not tiny_model.text_to_image
        assert derived.unet is tiny_model.text_to_image.unet
        assert derived.vae is tiny_model.text_to_image.vae
        assert derived.text_encoder is tiny_model.text_to_image.text_encoder
    assert type(tiny_model.image_to_image).__name__ == "StableDiffusionImg2ImgPipeline"
    assert type(tiny_model.inpaint).__name__ == "StableDiffusionInpaintPipeline"
    assert tiny_model.pipeline_for(Task.OUTPAINT) is tiny_model.inpaint


def test_tiny_random_is_float32_on_cpu_without_a_safety_checker(tiny_model) -> None:
    pipe = tiny_model.text_to_image
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    assert pipe.safety_checker is None
    assert pipe.vae_scale_factor == 8  # latents at 1/8 of the image, as in the real model


def test_tiny_random_weights_are_identical_on_every_build() -> None:
    first, second = build_tiny_random_pipeline(), build_tiny_random_pipeline()
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(first, name).state_dict(), getattr(second, name).state_dict()
        assert all(torch.equal(a[key], b[key]) for key in a), name


def test_building_tiny_random_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    build_tiny_random_pipeline()
    assert torch.equal(torch.rand(3), expected)


def test_byte_level_tokenizer_encodes_any_text_offline() -> None:
    tokenizer = build_byte_level_clip_tokenizer()
    assert len(tokenizer) == 514
    ids = tokenizer("héllo 🙂, 猫").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == "héllo🙂,猫"


def test_local_directory_loads_the_same_weights(tmp_path: Path, tiny_model) -> None:
    tiny_model.text_to_image.save_pretrained(tmp_path / "tiny")
    spec = ModelSpec(name="local-tiny", source=str(tmp_path / "tiny"))
    loaded = load_pipeline(spec, SETTINGS)
    assert loaded.inpaint is not None and loaded.inpaint.unet is loaded.text_to_image.unet
    np.testing.assert_array_equal(render(loaded.text_to_image), render(tiny_model.text_to_image))


def test_missing_local_directory_is_a_clear_error(tmp_path: Path) -> None:
    spec = ModelSpec(name="gone", source=str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(spec, SETTINGS)


def test_directory_without_a_pipeline_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a loadable diffusers pipeline"):
        load_pipeline(ModelSpec(name="empty", source=str(tmp_path)), SETTINGS)


def test_hub_id_without_network_says_what_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline mode makes the hub client fail at once instead of retrying DNS for seconds.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = ModelSpec(name="sd15", source="someorg/not-cached-model")
    with pytest.raises(ModelLoadError, match="network access"):
        load_pipeline(spec, SETTINGS)


def test_unknown_builtin_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="builtin:nope"):
        load_pipeline(ModelSpec(name="nope", source="builtin:nope"), SETTINGS)


def test_model_restricted_to_text_to_image_derives_nothing() -> None:
    spec = BUILTIN_MODELS[TINY_RANDOM].model_copy(update={"tasks": [Task.TEXT_TO_IMAGE]})
    loaded = load_pipeline(spec, SETTINGS)
    assert loaded.image_to_image is None and loaded.inpaint is None
    assert loaded.pipeline_for(Task.INPAINT) is None
