"""Per-model loader options: dtype, variant folders, single-file checkpoints, cpu_offload
and vae_tiling, on a tiny SD 1.5 folder."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from shared.model_registry import ModelRegistry
from shared.settings import Settings
from tests import model_folders as mf
from worker.pipelines import ModelLoadError, load_pipeline

SETTINGS = Settings(torch_threads=1)


def spec(name: str = "m", **fields: object):
    return ModelRegistry.from_settings(Settings(models={name: fields})).get(name)


@pytest.fixture(scope="module")
def fp16_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("variant") / "sd15"
    mf.build(mf.SD15).to(torch.float16).save_pretrained(folder, variant="fp16")
    return folder


def test_an_fp16_variant_folder_loads_with_variant_and_is_refused_without(fp16_folder) -> None:
    assert list((fp16_folder / "unet").glob("*.fp16.safetensors"))
    with pytest.raises(ModelLoadError, match="not a loadable diffusers pipeline"):
        load_pipeline(spec(source=str(fp16_folder)), SETTINGS)
    loaded = load_pipeline(spec(source=str(fp16_folder), variant="fp16"), SETTINGS)
    # float32 on the CPU unless the spec says otherwise, whatever the files hold.
    assert loaded.dtype == torch.float32 and loaded.text_to_image.unet.dtype == torch.float32


def test_dtype_is_the_specs(family_folders) -> None:
    loaded = load_pipeline(spec(source=str(family_folders[mf.SD15]), dtype="bfloat16"),
                           SETTINGS)
    assert loaded.dtype == torch.bfloat16 and loaded.text_to_image.unet.dtype == torch.bfloat16


def test_cpu_offload_is_ignored_on_the_cpu_with_a_log_and_vae_tiling_is_on(
    family_folders, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="worker.pipelines"):
        loaded = load_pipeline(spec(source=str(family_folders[mf.SD15]), cpu_offload=True,
                                    vae_tiling=True), SETTINGS)
    assert "cpu_offload ignored on cpu" in caplog.text
    assert loaded.text_to_image.vae.use_tiling
    assert loaded.text_to_image.device == torch.device("cpu")


def test_a_single_file_checkpoint_that_is_missing_or_unreadable_says_so(
    tmp_path: Path, family_folders
) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(spec(source=str(tmp_path / "gone.safetensors"), family="sd1"), SETTINGS)
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a checkpoint")
    offline = spec(source=str(bogus), family="sd1", config=str(family_folders[mf.SD15]))
    with pytest.raises(ModelLoadError, match="not a loadable sd1 checkpoint") as caught:
        load_pipeline(offline, SETTINGS)
    assert "network" not in str(caught.value)  # a local config needs none


def test_a_denoiser_only_checkpoint_takes_the_rest_from_its_config_folder(
    tmp_path: Path, family_folders
) -> None:
    # The usual Flux file: only the transformer, here with weights unlike the folder's.
    transformer = mf.build(mf.FLUX_DEV).transformer
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        for parameter in transformer.parameters():
            parameter.data.normal_()
    weights = {key: value.contiguous() for key, value in transformer.state_dict().items()}
    checkpoint = tmp_path / "flux-transformer.safetensors"
    save_file(weights, str(checkpoint))
    loaded = load_pipeline(spec(source=str(checkpoint), family="flux",
                                config=str(family_folders[mf.FLUX_DEV])), SETTINGS)
    assert type(loaded.text_to_image).__name__ == "FluxPipeline"
    state = loaded.text_to_image.transformer.state_dict()
    assert all(torch.equal(state[key], weights[key]) for key in weights)
    image = loaded.text_to_image("a fox", num_inference_steps=1, width=64, height=64,
                                 output_type="pil").images[0]
    assert image.size == (64, 64)
