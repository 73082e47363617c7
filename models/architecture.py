"""Shapes of the emoji model: one place for the VAE, UNet and noise-schedule configs.

Sizes were chosen to train on a 2-core CPU in about two hours and to keep each exported
weight file under 16 MiB in fp16; see models/train.py for the measured step times.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from models.dataset import IMAGE_SIZE
from models.text_encoder import TEXT_EMBED_DIM

LATENT_CHANNELS = 4
# Three resolution levels halve twice: 64×64×3 pixels <-> 16×16×4 latents.
VAE_BLOCK_CHANNELS = (32, 64, 128)
LATENT_SIZE = IMAGE_SIZE // 2 ** (len(VAE_BLOCK_CHANNELS) - 1)
UNET_BLOCK_CHANNELS = (32, 64, 128)

# v-prediction keeps the loss informative at both ends of the schedule; the cosine
# schedule spends more steps at high noise, which small images need (their global
# structure is decided early).
PREDICTION_TYPE = "v_prediction"
BETA_SCHEDULE = "squaredcos_cap_v2"
NUM_TRAIN_TIMESTEPS = 1000


def make_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCK_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCK_CHANNELS),
        block_out_channels=VAE_BLOCK_CHANNELS,
        layers_per_block=2,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=32,
        sample_size=IMAGE_SIZE,
        # No attention: the VAE stays purely convolutional, so training it on 32×32 crops
        # teaches it exactly what it does on whole 64×64 images.
        mid_block_add_attention=False,
    )


def make_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=UNET_BLOCK_CHANNELS,
        # Cross-attention only at 8×8 and 4×4 (and the 4×4 mid block): at 16×16 it would
        # cost 4× the attention for the level that mostly draws edges.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        cross_attention_dim=TEXT_EMBED_DIM,
        # diffusers' legacy name: this is the number of heads (16- and 32-wide heads here).
        attention_head_dim=4,
        norm_num_groups=32,
    )


def make_training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_schedule=BETA_SCHEDULE,
        prediction_type=PREDICTION_TYPE,
        clip_sample=False,
    )


def make_sampling_scheduler() -> DDIMScheduler:
    """The scheduler shipped with the pipeline: DDIM over the training noise schedule."""
    return DDIMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_schedule=BETA_SCHEDULE,
        prediction_type=PREDICTION_TYPE,
        clip_sample=False,
        set_alpha_to_one=True,
        # "trailing" starts sampling at t=999 (pure noise) for any step count, which the
        # default "leading" spacing misses with 25 steps.
        timestep_spacing="trailing",
        # Unused by "trailing" spacing; 1 only keeps diffusers' outdated-config warning quiet.
        steps_offset=1,
    )
