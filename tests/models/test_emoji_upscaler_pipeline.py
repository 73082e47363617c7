"""The upscaler pipeline's contract (tiny random UNet) and the committed weights in models/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    ImagePipelineOutput,
    UNet2DModel,
)
from PIL import Image

from models.dataset import DEFAULT_FONT_PATH
from models.upscaler_architecture import CELL_CHANNELS, make_upscaler_unet
from models.upscaler_pipeline import (
    DEFAULT_STEPS,
    DEFAULT_UPSCALER_DIR,
    EmojiUpscalePipeline,
    load_emoji_upscaler_pipeline,
    save_emoji_upscaler_pipeline,
)

MAX_WEIGHT_BYTES = 5 * 10**6


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=2 * CELL_CHANNELS,
        out_channels=CELL_CHANNELS,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        add_attention=False,
        class_embed_type="timestep",
        norm_num_groups=4,
    )


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """A tiny random upscaler written and read back through the real folder format."""
    folder = tmp_path_factory.mktemp("upscaler") / "pipeline"
    save_emoji_upscaler_pipeline(folder, tiny_unet(), residual_scale=10.0, default_noise_level=5)
    pipeline = load_emoji_upscaler_pipeline(path=folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def picture(seed: int, size=(16, 24)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def upscale(pipe, images, seeds, **kwargs):
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    kwargs.setdefault("num_inference_steps", 3)
    return pipe(image=images, generator=generators, **kwargs).images


def test_output_is_rgb_at_twice_the_size(pipe):
    result = pipe(image=picture(0), num_inference_steps=2, generator=torch.Generator())
    assert isinstance(result, ImagePipelineOutput)
    (image,) = result.images
    assert image.size == (32, 48) and image.mode == "RGB"


def test_settings_the_service_reads(pipe):
    assert pipe.scale == 2
    assert pipe.default_noise_level == 5 == pipe.config.default_noise_level
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert DEFAULT_STEPS >= 1


def test_same_generator_same_image_and_prompt_is_ignored(pipe):
    first = upscale(pipe, [picture(1)], [7])[0]
    again = upscale(pipe, [picture(1)], [7], prompt="a cat")[0]
    other = upscale(pipe, [picture(1)], [8])[0]
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_batching_does_not_change_an_image(pipe):
    images, seeds = [picture(2), picture(3), picture(4)], [10, 11, 12]
    batched = upscale(pipe, images, seeds, noise_level=30)
    for image, seed, together in zip(images, seeds, batched):
        alone = upscale(pipe, [image], [seed], noise_level=30)[0]
        difference = np.abs(np.asarray(alone, np.int16) - np.asarray(together, np.int16))
        assert difference.max() <= 1  # float rounding of a batched convolution at most


def test_callback_sees_every_step_and_interrupt_stops_the_loop(pipe):
    seen = []

    def record(p, step, timestep, tensors):
        seen.append((step, int(timestep), sorted(tensors)))
        return {}

    upscale(pipe, [picture(5)], [0], num_inference_steps=4, callback_on_step_end=record)
    assert [s for s, _, _ in seen] == [0, 1, 2, 3]
    assert pipe.num_timesteps == 4
    assert all(names == [] for _, _, names in seen)

    steps_run = []

    def stop_after_two(p, step, timestep, tensors):
        steps_run.append(step)
        if step == 1:
            p._interrupt = True
        return {}

    images = upscale(
        pipe, [picture(5)], [0], num_inference_steps=6, callback_on_step_end=stop_after_two
    )
    assert steps_run == [0, 1]
    assert images[0].size == (32, 48)


def test_callback_can_read_the_latents(pipe):
    shapes = []

    def record(p, step, timestep, tensors):
        shapes.append(tuple(tensors["latents"].shape))
        return tensors

    upscale(
        pipe,
        [picture(6)],
        [0],
        num_inference_steps=2,
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    assert shapes == [(1, CELL_CHANNELS, 24, 16)] * 2


@pytest.mark.parametrize(
    "scheduler_class",
    [DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler],
)
def test_any_scheduler_built_from_the_config_works(pipe, scheduler_class):
    shipped = pipe.scheduler
    try:
        pipe.scheduler = scheduler_class.from_config(shipped.config)
        first = upscale(pipe, [picture(7)], [3], num_inference_steps=3)[0]
        pipe.scheduler = scheduler_class.from_config(shipped.config)
        again = upscale(pipe, [picture(7)], [3], num_inference_steps=3)[0]
    finally:
        pipe.scheduler = shipped
    assert first.size == (32, 48)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert pipe.num_timesteps == 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"image": picture(0, size=(20, 24))}, "image"),
        ({"image": [picture(0), picture(1, size=(24, 24))]}, "image"),
        ({"image": picture(0), "noise_level": 10_000}, "noise_level"),
        ({"image": [picture(0), picture(1)], "generator": [torch.Generator()]}, "generator"),
    ],
)
def test_bad_input_names_its_argument(pipe, kwargs, field):
    with pytest.raises(ValueError, match=field):
        pipe(num_inference_steps=1, **kwargs)


def test_to_dtype_and_output_types(pipe):
    as_array = pipe(image=picture(8), num_inference_steps=1, output_type="np").images
    assert as_array.shape == (1, 48, 32, 3) and 0 <= as_array.min() <= as_array.max() <= 1
    half = pipe.to(torch.bfloat16)
    try:
        assert half.unet.dtype == torch.bfloat16
        (image,) = half(image=picture(8), num_inference_steps=1).images
        assert image.size == (32, 48)
    finally:
        pipe.to(torch.float32)


# -- the committed weights ------------------------------------------------------------

committed = pytest.mark.skipif(
    not (DEFAULT_UPSCALER_DIR / "model_index.json").is_file(),
    reason=f"no trained upscaler in {DEFAULT_UPSCALER_DIR} (run python -m models.train_upscaler)",
)


@committed
def test_committed_folder_is_a_small_fp16_upscaler():
    from safetensors.torch import load_file

    index = json.loads((DEFAULT_UPSCALER_DIR / "model_index.json").read_text())
    assert index["_class_name"] == EmojiUpscalePipeline.__name__
    weights = sorted(DEFAULT_UPSCALER_DIR.glob("*/*.safetensors"))
    assert [w.parent.name for w in weights] == ["unet"]
    assert sum(w.stat().st_size for w in weights) < MAX_WEIGHT_BYTES
    assert all(t.dtype == torch.float16 for t in load_file(weights[0]).values())
    config = json.loads((DEFAULT_UPSCALER_DIR / "unet" / "config.json").read_text())
    expected = make_upscaler_unet().config
    assert config["block_out_channels"] == list(expected.block_out_channels)


REPO_ROOT = Path(__file__).resolve().parents[2]
# The evaluation's first 32 held-out emoji: the committed weights score 33.0 dB / SSIM
# 0.9545 there at the default steps, bicubic 29.6 dB / 0.9445.
QUALITY_SAMPLE = 32


@pytest.fixture(scope="module")
def held_out_pairs():
    """The saved pairs' held-out split, else the held-out emoji rendered afresh."""
    from models.upscaler_data import build_pairs, dataset_emoji, is_held_out, load_pairs, split

    saved = REPO_ROOT / "data" / "upscaler-pairs.npz"
    if saved.is_file():
        return split(load_pairs(saved))[1]
    if not DEFAULT_FONT_PATH.is_file():
        pytest.skip(f"no data/upscaler-pairs.npz and no font at {DEFAULT_FONT_PATH}")
    pytest.importorskip("emoji", reason="the emoji package (train extra) orders the dataset")
    emoji = dataset_emoji(REPO_ROOT / "data" / "emoji-dataset.npz")
    return build_pairs([char for i, char in enumerate(emoji) if is_held_out(i)])


@committed
def test_committed_upscaler_beats_bicubic_on_held_out_emoji(held_out_pairs):
    pytest.importorskip("skimage", reason="scikit-image (dev extra) computes SSIM")
    from models.evaluate_upscaler import resize_all, scores, upscale_all

    low = held_out_pairs.low[:QUALITY_SAMPLE]
    high = held_out_pairs.high[:QUALITY_SAMPLE]
    pipe = load_emoji_upscaler_pipeline()
    pipe.set_progress_bar_config(disable=True)
    upscaled, _ = upscale_all(pipe, low, DEFAULT_STEPS, noise_level=None, batch=16)
    bicubic, _ = resize_all(low, Image.BICUBIC)
    model_psnr, model_ssim = scores(upscaled, high)
    bicubic_psnr, bicubic_ssim = scores(bicubic, high)
    assert model_psnr > bicubic_psnr + 1, (model_psnr, bicubic_psnr)
    assert model_ssim > bicubic_ssim, (model_ssim, bicubic_ssim)
