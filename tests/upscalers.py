"""Tiny random-weight upscale pipelines, built in code and saved as diffusers folders.

The same two pipeline classes as the real upscalers (SD x4 and the SD latent x2), with
the shapes cut down as diffusers' own pipeline tests do, so a worker loads them from disk
exactly as it loads the real weights and runs them in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionLatentUpscalePipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from worker.pipelines import TINY_MAX_TOKENS, build_byte_level_clip_tokenizer

TINY_UPSCALER_SEED = 0


def _text_encoder(tokenizer) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TINY_MAX_TOKENS, layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))


def build_tiny_x4_upscaler() -> StableDiffusionUpscalePipeline:
    """SD x4 upscaler's shape: the UNet sees 4 latent + 3 low-res image channels (7) and
    the noise level as a class embedding; a 3-level VAE decodes latents 4× larger."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_UPSCALER_SEED)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=16,
            in_channels=7, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=(2, 4), num_class_embeds=351,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 16, 32), norm_num_groups=8, in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, layers_per_block=1,
            scaling_factor=0.08333,  # the real x4 upscaler's
        )
        tokenizer = build_byte_level_clip_tokenizer()
        text_encoder = _text_encoder(tokenizer)
    return StableDiffusionUpscalePipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
        unet=unet.eval(),
        low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(prediction_type="v_prediction"),
        max_noise_level=350,
    )


def build_tiny_latent_x2_upscaler() -> StableDiffusionLatentUpscalePipeline:
    """SD latent x2 upscaler's shape: 4 noisy + 4 image latent channels in, 5 out (the
    last unused), a 160-wide timestep condition (128 noise-level + 32 pooled text)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_UPSCALER_SEED)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=8,
            in_channels=8, out_channels=5, time_cond_proj_dim=160,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=(2, 4),
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 16, 32, 32), norm_num_groups=8, in_channels=3,
            out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1,
        )
        tokenizer = build_byte_level_clip_tokenizer()
        text_encoder = _text_encoder(tokenizer)
    return StableDiffusionLatentUpscalePipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
        unet=unet.eval(), scheduler=EulerDiscreteScheduler(prediction_type="sample"),
    )


def save_tiny_upscalers(folder: Path) -> dict[str, Path]:
    """Both tiny upscalers saved under ``folder``: {"x4": path, "x2": path}."""
    paths = {"x4": folder / "tiny-x4-upscaler", "x2": folder / "tiny-x2-upscaler"}
    build_tiny_x4_upscaler().save_pretrained(paths["x4"])
    build_tiny_latent_x2_upscaler().save_pretrained(paths["x2"])
    return paths
