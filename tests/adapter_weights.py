"""Tiny adapter weights built in code, saved the way real ones are shipped: a LoRA made
with PEFT and saved by diffusers' ``save_lora_weights``, a ``ControlNetModel`` saved with
``save_pretrained``, and a tiny SDXL pipeline folder (a second family to refuse).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from tests.model_folders import SDXL, build
from worker.pipelines import build_tiny_random_pipeline

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def save_tiny_lora(lora_dir: Path, name: str, seed: int, unet: UNet2DConditionModel | None = None
                   ) -> Path:
    """A rank-4 LoRA on ``unet``'s attention projections (tiny-random's by default) with
    random non-zero weights (PEFT starts ``lora_B`` at zero, which would change nothing),
    saved as ``<lora_dir>/<name>.safetensors``."""
    unet = unet if unet is not None else build_tiny_random_pipeline().unet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                    target_modules=LORA_TARGETS))
    lora_dir.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        lora_dir, unet_lora_layers=get_peft_model_state_dict(unet),
        weight_name=f"{name}.safetensors", safe_serialization=True,
    )
    return lora_dir / f"{name}.safetensors"


def save_tiny_controlnet(folder: Path, seed: int = 0,
                         unet: UNet2DConditionModel | None = None) -> Path:
    """A ControlNet copied from ``unet`` (tiny-random's by default), as ControlNets are
    made, with random (not zero) output convolutions so that it steers; its conditioning
    encoder downsamples 8x like the VAE."""
    unet = unet if unet is not None else build_tiny_random_pipeline().unet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
        # ControlNet's zero convolutions make a fresh one a no-op; trained ones are not.
        with torch.no_grad():
            for parameter in [*controlnet.controlnet_down_blocks.parameters(),
                              *controlnet.controlnet_mid_block.parameters()]:
                parameter.normal_(std=0.5)
    controlnet.save_pretrained(folder)
    return folder


def build_tiny_sdxl_pipeline() -> StableDiffusionXLPipeline:
    """The suite's tiny SDXL (``tests.model_folders``), the same weights on every call."""
    return build(SDXL)
