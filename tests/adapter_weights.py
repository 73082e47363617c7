"""Tiny adapter weights built in code, saved the way real ones are shipped: a LoRA made
with PEFT and saved by diffusers' ``save_lora_weights``, a ``ControlNetModel`` saved with
``save_pretrained``, and a tiny SDXL pipeline folder (a second family to refuse).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from worker.pipelines import build_byte_level_clip_tokenizer, build_tiny_random_pipeline

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
    """An SDXL-shaped pipeline with tiny random weights (two text encoders, text-time
    embedding), as in diffusers' own SDXL tests."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 1),
            projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
            cross_attention_dim=64,  # both text encoders' 32
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 16, 32, 32), norm_num_groups=8, in_channels=3,
            out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1,
            sample_size=64,
        )
        tokenizer = build_byte_level_clip_tokenizer()
        config = CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
            projection_dim=32, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        text_encoder = CLIPTextModel(config)
        text_encoder_2 = CLIPTextModelWithProjection(config)
    return StableDiffusionXLPipeline(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(), tokenizer=tokenizer, tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                         beta_schedule="scaled_linear", steps_offset=1),
    )
