"""Shape of the emoji upscaler: a small pixel-space conditional diffusion UNet (2×).

The UNet works on 2×2 space-to-depth pixels (`to_cells`: a 128×128×3 picture is 64×64×12,
losslessly), so its widest level runs at the low-resolution grid: a quarter of the cost of
running at full resolution, which is what lets it train on a shared 2-core CPU in under an
hour.

As in Stable Diffusion's x4 upscaler, the network sees the noisy sample concatenated with
the upsampled low-resolution image, and a "noise level": noise the pipeline itself adds
to the low-resolution conditioning (the low-res scheduler below), its level fed through
the class embedding as a second timestep. Higher levels teach the model not to trust
fine low-resolution detail, which is how a cascade tolerates its base model's artifacts.

What diffuses is not the 128×128 picture but its residual over the bicubic enlargement,
scaled to unit variance: bicubic already gets the colours and shapes right, so all of the
network's capacity goes to the edges bicubic blurs, and its worst case (a residual of
zero) is bicubic itself. That is what makes beating bicubic reachable for a model this
small. v-prediction keeps the loss informative at both ends of the schedule, and its
first DDIM step from pure noise is already the network's mean estimate of the residual,
so even a few steps give a sharp, faithful image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from models.upscaler_data import HIGH_SIZE

IMAGE_CHANNELS = 3
CELL = 2  # space-to-depth factor, equal to the upscaling factor
CELL_CHANNELS = IMAGE_CHANNELS * CELL * CELL
BLOCK_CHANNELS = (32, 64, 64)
LAYERS_PER_BLOCK = 1
PREDICTION_TYPE = "v_prediction"
BETA_SCHEDULE = "squaredcos_cap_v2"
NUM_TRAIN_TIMESTEPS = 1000
# SD's x4 upscaler's values: noise levels index a linear DDPM schedule of 1000 steps and
# stop at 350, past which the low-resolution image says little any more.
MAX_NOISE_LEVEL = 350


def make_upscaler_unet() -> UNet2DModel:
    return UNet2DModel(
        sample_size=HIGH_SIZE // CELL,
        # the noisy residual and the bicubic-upsampled low-res image, both as cells
        in_channels=2 * CELL_CHANNELS,
        out_channels=CELL_CHANNELS,
        block_out_channels=BLOCK_CHANNELS,
        down_block_types=("DownBlock2D",) * len(BLOCK_CHANNELS),
        up_block_types=("UpBlock2D",) * len(BLOCK_CHANNELS),
        layers_per_block=LAYERS_PER_BLOCK,
        # No attention anywhere: purely convolutional, the network treats a crop the way
        # it treats a whole image, and any input size that is a multiple of 8 works.
        add_attention=False,
        # The noise level goes through the same sinusoidal projection as the timestep.
        class_embed_type="timestep",
        norm_num_groups=16,
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
        # "trailing" starts at t=999 (pure noise) for any step count.
        timestep_spacing="trailing",
        steps_offset=1,  # unused by "trailing"; keeps diffusers' outdated-config warning quiet
    )


def make_low_res_scheduler() -> DDPMScheduler:
    """Adds the conditioning noise; only its alphas are used, in training and sampling."""
    return DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="linear")


def upsample(low: torch.Tensor) -> torch.Tensor:
    """The bicubic enlargement both the conditioning and the residual are relative to."""
    return F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False)


def noisy_low_res(
    low: torch.Tensor, noise: torch.Tensor, noise_level: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """The low-resolution image at each sample's noise level (a DDPM forward step)."""
    alpha_bar = alphas_cumprod.to(low.device)[noise_level].view(-1, 1, 1, 1).to(low.dtype)
    return alpha_bar.sqrt() * low + (1 - alpha_bar).sqrt() * noise


def to_cells(pictures: torch.Tensor) -> torch.Tensor:
    """[B, 3, 2H, 2W] pixels -> [B, 12, H, W] cells (what the UNet reads and writes)."""
    return F.pixel_unshuffle(pictures, CELL)


def from_cells(cells: torch.Tensor) -> torch.Tensor:
    return F.pixel_shuffle(cells, CELL)
