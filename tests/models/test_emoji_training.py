"""Training building blocks: schedule, crops, caption sampling, and the checkpoint/resume loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from models.dataset import EmojiDataset
from models.train_unet import (
    CAPTION_TEMPLATES,
    ConditionSampler,
    TextStates,
    UnetOptions,
    caption_variants,
)
from models.train_vae import random_crops
from models.training import StageRunner, StageSettings, warmup_cosine


def test_warmup_cosine_rises_then_decays_to_the_floor():
    factors = [warmup_cosine(step, total_steps=100, warmup_steps=10) for step in range(101)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert factors[100] == pytest.approx(0.05)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))


def test_random_crops_are_windows_of_the_source_images():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).reshape(2, 3, 8, 8)
    crops = random_crops(images, count=5, size=4, generator=torch.Generator().manual_seed(0))
    assert crops.shape == (5, 3, 4, 4)
    for crop in crops:
        source = images[int(crop[0, 0, 0]) // (3 * 8 * 8)]
        top, left = divmod(int(crop[0, 0, 0]) % 64, 8)
        assert torch.equal(crop, source[:, top : top + 4, left : left + 4])


def _dataset(captions: list[list[str]], skin_tone: list[bool]) -> EmojiDataset:
    return EmojiDataset(
        images=np.zeros((len(captions), 64, 64, 3), np.uint8),
        emoji=["?"] * len(captions),
        captions=captions,
        is_skin_tone=np.array(skin_tone),
    )


def test_caption_variants_are_grouped_per_image_name_first():
    dataset = _dataset([["cat face", "cat"], ["rocket"]], [False, False])
    prompts, first, count = caption_variants(dataset)
    assert count == [2 * len(CAPTION_TEMPLATES), len(CAPTION_TEMPLATES)]
    assert prompts[first[0]] == "cat face" and prompts[first[1]] == "rocket"
    assert "an emoji of cat" in prompts[first[0] : first[0] + count[0]]


def test_sampler_downweights_skin_tones_and_drops_captions():
    dataset = _dataset([["a"], ["b: light skin tone"]], [False, True])
    prompts, first, count = caption_variants(dataset)
    states = torch.arange(len(prompts) + 1, dtype=torch.float16)[:, None, None]
    text = TextStates(states, torch.tensor(first), torch.tensor(count), len(prompts))
    options = UnetOptions(
        0.999, caption_drop=0.1, skin_tone_weight=0.25, name_share=0.5, min_snr_gamma=5.0
    )
    latents = torch.tensor([0.0, 1.0])[:, None, None, None]
    sampler = ConditionSampler(
        latents,
        text,
        dataset.is_skin_tone,
        options,
        torch.device("cpu"),
        torch.Generator().manual_seed(0),
    )
    picked_latents, picked_states = sampler.sample(20000)
    assert picked_latents.mean().item() == pytest.approx(0.25 / 1.25, abs=0.02)
    dropped = (picked_states.flatten() == text.empty_caption).float().mean().item()
    assert dropped == pytest.approx(0.1, abs=0.01)


def _runner(tmp_path, exports: list[int], steps: int = 7, max_minutes=None) -> StageRunner:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    settings = StageSettings(
        name="toy",
        steps=steps,
        batch_size=4,
        learning_rate=0.1,
        warmup_steps=2,
        checkpoint_every=3,
        max_minutes=max_minutes,
    )
    runner = StageRunner(
        settings,
        model,
        compute_loss=lambda step: model(torch.ones(4, 2)).square().mean(),
        export=lambda: exports.append(runner.step),
        state_path=tmp_path / "toy_state.pt",
        generator=torch.Generator().manual_seed(0),
    )
    return runner


def test_runner_checkpoints_periodically_and_at_the_end(tmp_path):
    exports: list[int] = []
    result = _runner(tmp_path, exports).run()
    assert result.finished and result.steps_done == 7
    assert exports == [3, 6, 7]


def test_resume_restores_the_finished_state(tmp_path):
    first = _runner(tmp_path, [])
    first.run()
    resumed = _runner(tmp_path, [])
    assert resumed.load_state() and resumed.done
    for before, after in zip(first.model.parameters(), resumed.model.parameters()):
        assert torch.equal(before, after)


def test_time_budget_shortens_the_plan_and_exports_at_the_end(tmp_path):
    exports: list[int] = []
    runner = _runner(tmp_path, exports, steps=10**6, max_minutes=0.005)
    result = runner.run()
    assert result.steps_done < 10**6
    assert result.seconds < 0.005 * 60 + 5  # the budget plus one checkpoint's slack
    assert exports[-1] == result.steps_done
    assert (tmp_path / "toy_state.pt").is_file()
