"""Tiny random-weight pipelines of every model family, saved as diffusers folders.

Shaped like diffusers' own pipeline tests' ``get_dummy_components`` (one or two layers,
32-wide), except that every VAE has four levels, so latents are 1/8 of the image and the
size multiples (8; 16 for SD3 and Flux) are the real models'. Everything is built in code,
offline: the CLIP tokenizers are byte-level, the T5 tokenizer a character vocabulary.

``save_family_folders(root)`` writes one folder per family and returns name → path;
``FAMILY_FOLDERS`` names them. Building all of them takes a few seconds on one core.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from worker.pipelines import TINY_MAX_TOKENS, build_byte_level_clip_tokenizer

SEED = 0
HIDDEN = 32

SD15 = "tiny-sd15"
SD2_V = "tiny-sd2-v"
SDXL = "tiny-sdxl"
SDXL_REFINER = "tiny-sdxl-refiner"
SD3 = "tiny-sd3"
FLUX_DEV = "tiny-flux-dev"
FLUX_SCHNELL = "tiny-flux-schnell"


def _vae(latent_channels: int = 4, **extra: object) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        norm_num_groups=4,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        layers_per_block=1,
        sample_size=64,
        **extra,  # type: ignore[arg-type]
    )


def _clip_config(vocab_size: int, projection_dim: int | None = None) -> CLIPTextConfig:
    tokenizer = build_byte_level_clip_tokenizer()
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TINY_MAX_TOKENS,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=projection_dim or HIDDEN,
    )


def build_t5_tokenizer() -> T5Tokenizer:
    """A T5 tokenizer over printable ASCII characters (anything else is ``<unk>``)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(char, -2.0) for char in string.printable if not char.isspace()]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _t5(vocab_size: int) -> T5EncoderModel:
    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=HIDDEN, d_ff=37, d_kv=8, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    ))


def _sd_unet(cross_attention_dim: int, **extra: object) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        **extra,  # type: ignore[arg-type]
    )


_SD_NOISE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "steps_offset": 1}


def build_sd15() -> StableDiffusionPipeline:
    tokenizer = build_byte_level_clip_tokenizer()
    return StableDiffusionPipeline(
        unet=_sd_unet(HIDDEN), vae=_vae(),
        text_encoder=CLIPTextModel(_clip_config(len(tokenizer))), tokenizer=tokenizer,
        scheduler=DDIMScheduler(**_SD_NOISE, clip_sample=False, set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_sd2_v() -> StableDiffusionPipeline:
    """SD 2.x 768-v shaped: a v-prediction noise schedule, linear attention projections."""
    pipe = build_sd15()
    pipe.unet = _sd_unet(HIDDEN, use_linear_projection=True, upcast_attention=True)
    pipe.scheduler = DDIMScheduler(**_SD_NOISE, clip_sample=False, set_alpha_to_one=False,
                                   prediction_type="v_prediction")
    return pipe


def _sdxl_unet(cross_attention_dim: int, time_ids: int) -> UNet2DConditionModel:
    time_embed_dim = 8
    return UNet2DConditionModel(
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
        addition_time_embed_dim=time_embed_dim,
        transformer_layers_per_block=(1, 1),
        # The time ids (6 for the base, 5 for the refiner) plus the pooled text embedding.
        projection_class_embeddings_input_dim=time_ids * time_embed_dim + HIDDEN,
        cross_attention_dim=cross_attention_dim,
    )


def build_sdxl() -> StableDiffusionXLPipeline:
    tokenizer = build_byte_level_clip_tokenizer()
    return StableDiffusionXLPipeline(
        unet=_sdxl_unet(2 * HIDDEN, time_ids=6), vae=_vae(),
        text_encoder=CLIPTextModel(_clip_config(len(tokenizer))), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(len(tokenizer))),
        tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(**_SD_NOISE, timestep_spacing="leading"),
        force_zeros_for_empty_prompt=True,
    )


def build_sdxl_refiner(vae: AutoencoderKL | None = None) -> StableDiffusionXLImg2ImgPipeline:
    """The refiner: second text encoder only, aesthetic-score time ids (5, not 6)."""
    tokenizer = build_byte_level_clip_tokenizer()
    return StableDiffusionXLImg2ImgPipeline(
        unet=_sdxl_unet(HIDDEN, time_ids=5), vae=vae or _vae(),
        text_encoder=None, tokenizer=None,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(len(tokenizer))),
        tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(**_SD_NOISE, timestep_spacing="leading"),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    )


def build_sd3() -> StableDiffusion3Pipeline:
    tokenizer, t5_tokenizer = build_byte_level_clip_tokenizer(), build_t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=HIDDEN, joint_attention_dim=HIDDEN,
        pooled_projection_dim=2 * HIDDEN, out_channels=16,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        # SD3's VAE has 16 latent channels, which its inpaint pipeline insists on.
        vae=_vae(16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                 scaling_factor=1.5035),
        text_encoder=CLIPTextModelWithProjection(_clip_config(len(tokenizer))),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(len(tokenizer))),
        tokenizer_2=tokenizer,
        text_encoder_3=_t5(len(t5_tokenizer)), tokenizer_3=t5_tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def _build_flux(guidance_embeds: bool) -> FluxPipeline:
    tokenizer, t5_tokenizer = build_byte_level_clip_tokenizer(), build_t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=HIDDEN, pooled_projection_dim=HIDDEN,
        axes_dims_rope=[4, 4, 8], guidance_embeds=guidance_embeds,
    )
    return FluxPipeline(
        transformer=transformer,
        vae=_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                 scaling_factor=1.5035),
        text_encoder=CLIPTextModel(_clip_config(len(tokenizer))), tokenizer=tokenizer,
        text_encoder_2=_t5(len(t5_tokenizer)), tokenizer_2=t5_tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=guidance_embeds, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096),
    )


def build_flux_dev() -> FluxPipeline:
    """Flux.1-dev shaped: guidance distilled into an embedding (``guidance_embeds``)."""
    return _build_flux(guidance_embeds=True)


def build_flux_schnell() -> FluxPipeline:
    """Flux.1-schnell shaped: timestep-distilled, no guidance input at all."""
    return _build_flux(guidance_embeds=False)


BUILDERS: dict[str, Callable[[], DiffusionPipeline]] = {
    SD15: build_sd15,
    SD2_V: build_sd2_v,
    SDXL: build_sdxl,
    SDXL_REFINER: build_sdxl_refiner,
    SD3: build_sd3,
    FLUX_DEV: build_flux_dev,
    FLUX_SCHNELL: build_flux_schnell,
}
FAMILY_FOLDERS = tuple(BUILDERS)


def build(name: str) -> DiffusionPipeline:
    """Family ``name``'s tiny pipeline, with the same weights on every call."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        pipe = BUILDERS[name]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_family_folders(root: Path, names: tuple[str, ...] = FAMILY_FOLDERS) -> dict[str, Path]:
    """Save each family's tiny pipeline under ``root/<name>``; name → folder."""
    folders = {}
    for name in names:
        folder = root / name
        if not (folder / "model_index.json").exists():
            build(name).save_pretrained(folder)
        folders[name] = folder
    return folders
