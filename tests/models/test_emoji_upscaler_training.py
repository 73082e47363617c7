"""The upscaler's data (pairs, held-out split), batches, and a few real training steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.dataset import DEFAULT_FONT_PATH
from models.train_upscaler import PairBatches, main, residual_scale
from models.upscaler_architecture import from_cells, make_low_res_scheduler, upsample
from models.upscaler_data import (
    HELD_OUT_EVERY,
    HIGH_SIZE,
    UpscalePairs,
    load_pairs,
    render_pair,
    save_pairs,
    split,
)
from models.upscaler_pipeline import load_emoji_upscaler_pipeline


def synthetic_pairs(count: int) -> UpscalePairs:
    """Coloured squares on white, downscaled with Lanczos as the real pairs are."""
    rng = np.random.default_rng(0)
    highs, lows = [], []
    for _ in range(count):
        high = np.full((HIGH_SIZE, HIGH_SIZE, 3), 255, np.uint8)
        top, left = rng.integers(8, 64, 2)
        high[top : top + 48, left : left + 40] = rng.integers(0, 255, 3)
        highs.append(high)
        lows.append(np.asarray(Image.fromarray(high).resize((64, 64), Image.LANCZOS)))
    return UpscalePairs(np.stack(lows), np.stack(highs), [f"e{i}" for i in range(count)])


@pytest.fixture(scope="module")
def renderer():
    if not DEFAULT_FONT_PATH.is_file():
        pytest.skip(f"Noto Color Emoji not installed at {DEFAULT_FONT_PATH}")
    from models.dataset import EmojiRenderer

    return EmojiRenderer()


@pytest.mark.parametrize("char", ["🐱", "🇯🇵", "👋🏽"])
def test_low_image_is_the_emoji_datasets_own(renderer, char):
    low, high = render_pair(renderer, char)
    assert np.array_equal(low, renderer.render(char))
    assert high.shape == (HIGH_SIZE, HIGH_SIZE, 3) and (high[0, 0] == 255).all()
    # The two are one picture at two sizes: the high one, shrunk, is close to the low one.
    shrunk = np.asarray(Image.fromarray(high).resize((64, 64), Image.LANCZOS), np.int16)
    assert np.abs(shrunk - low).mean() < 3


def test_unligated_sequence_gives_no_pair(renderer):
    assert render_pair(renderer, "🐱\u200d🍕") is None


def test_every_tenth_emoji_is_held_out(tmp_path):
    pairs = synthetic_pairs(25)
    save_pairs(pairs, tmp_path / "pairs.npz")
    training, held_out = split(load_pairs(tmp_path / "pairs.npz"))
    assert held_out.emoji == ["e0", "e10", "e20"]
    assert len(training) == 22 and not set(training.emoji) & set(held_out.emoji)
    assert np.array_equal(held_out.high[1], pairs.high[HELD_OUT_EVERY])


def test_residual_scale_gives_unit_variance():
    pairs = synthetic_pairs(6)
    low = torch.from_numpy(pairs.low).permute(0, 3, 1, 2)
    high = torch.from_numpy(pairs.high).permute(0, 3, 1, 2)
    scale = residual_scale(low, high, chunk=4)
    residual = (high.float() / 127.5 - 1) - upsample(low.float() / 127.5 - 1)
    assert (residual * scale).std().item() == pytest.approx(1.0, rel=0.01)


def test_batches_are_aligned_crops_of_residual_and_condition():
    batches = PairBatches.from_pairs(synthetic_pairs(4), crop=32, generator=torch.Generator())
    alphas = make_low_res_scheduler().alphas_cumprod.float()
    condition, residual, levels = batches.sample(64, alphas)
    assert condition.shape == residual.shape == (64, 12, 16, 16)
    assert levels.min() >= 0 and levels.max() <= 350
    # At the lowest noise levels the condition is the bicubic image, so condition plus
    # residual is the high-resolution crop: the two crops come from the same window.
    quiet = levels <= 2
    assert quiet.any()
    rebuilt = from_cells(condition[quiet] + residual[quiet] / batches.residual_scale)
    assert rebuilt.min() > -1.1 and rebuilt.max() < 1.1
    assert (rebuilt > 0.9).float().mean() > 0.2  # white background, not misaligned noise


def test_a_few_steps_train_export_and_resume(tmp_path):
    save_pairs(synthetic_pairs(11), tmp_path / "pairs.npz")
    args = [
        "--pairs", str(tmp_path / "pairs.npz"),
        "--work-dir", str(tmp_path / "work"),
        "--out", str(tmp_path / "upscaler"),
        "--steps", "4",
        "--batch", "2",
        "--crop", "16",
        "--warmup", "1",
        "--checkpoint-every", "2",
    ]  # fmt: skip
    main(args)
    state = torch.load(tmp_path / "work" / "upscaler_state.pt", weights_only=True)
    assert state["step"] == 4
    pipe = load_emoji_upscaler_pipeline(path=tmp_path / "upscaler")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.residual_scale > 1
    (image,) = pipe(image=Image.new("RGB", (16, 16), "white"), num_inference_steps=1).images
    assert image.size == (32, 32)

    main([*args, "--resume"])  # already done: re-exports, trains nothing
    assert torch.load(tmp_path / "work" / "upscaler_state.pt", weights_only=True)["step"] == 4
    main([*args, "--resume", "--more-steps", "2"])
    assert torch.load(tmp_path / "work" / "upscaler_state.pt", weights_only=True)["step"] == 6
    assert load_emoji_upscaler_pipeline(path=tmp_path / "upscaler").unet.dtype == torch.float32
