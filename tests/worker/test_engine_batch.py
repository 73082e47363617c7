"""Batched generation on the tiny-random model: one pipeline call for several jobs gives
each job the images it gets alone, its own progress and its own cancel.

The stated tolerance: every pixel channel of a batched image is within
``BATCH_PIXEL_TOLERANCE`` (of 255) of the same job run alone with the same seed. The
batched UNet and VAE matmuls may sum in another order, so the last float bits differ
and, after rounding to 8 bits, a channel may land one or two steps away.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared.batching import batch_signature
from tests.factories import make_plan
from worker.engine import GeneratedImage, GenerationCanceled, GenerationEngine

BATCH_PIXEL_TOLERANCE = 2


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def never(step: int, total: int) -> bool:
    return False


def images_of(result: list[GeneratedImage] | GenerationCanceled) -> list[GeneratedImage]:
    assert not isinstance(result, GenerationCanceled), result
    return result


@pytest.mark.parametrize("scheduler", ["ddim", "euler_ancestral"])
def test_each_batched_image_equals_its_job_run_alone(engine: GenerationEngine,
                                                     scheduler: str) -> None:
    # Different prompts, negative prompts, seeds and image counts share one call.
    plans = [
        make_plan(prompt="a cat", negative_prompt="blurry", seed=11, scheduler=scheduler),
        make_plan(prompt="a dog on a hill", negative_prompt="", num_images=2, seed=40,
                  scheduler=scheduler),
        make_plan(prompt="a red fox", negative_prompt="text, watermark", seed=7,
                  scheduler=scheduler),
    ]
    assert len({batch_signature(plan) for plan in plans}) == 1
    batched = engine.generate_batch(plans, [never] * len(plans))
    for plan, result in zip(plans, batched, strict=True):
        alone = engine.generate(plan)
        got = images_of(result)
        assert [r.seed for r in got] == plan.seeds
        for batch_image, alone_image in zip(got, alone, strict=True):
            difference = np.abs(pixels(batch_image.image) - pixels(alone_image.image))
            assert difference.max() <= BATCH_PIXEL_TOLERANCE
    # ...and they are the jobs' own images, not copies of one another.
    first, second = images_of(batched[0])[0], images_of(batched[2])[0]
    assert np.abs(pixels(first.image) - pixels(second.image)).max() > 5


def test_each_job_of_a_batch_reports_its_own_progress(engine: GenerationEngine) -> None:
    seen: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}

    def reporter(name: str):
        def on_step(step: int, total: int) -> bool:
            seen[name].append((step, total))
            return False
        return on_step

    engine.generate_batch([make_plan(seed=1), make_plan(seed=2, prompt="a dog")],
                          [reporter("a"), reporter("b")])
    assert seen["a"] == seen["b"] == [(step, 4) for step in range(1, 5)]


def test_a_canceled_job_leaves_the_batch_and_the_others_finish(engine: GenerationEngine) -> None:
    steps_after_cancel: list[int] = []

    def cancel_at_two(step: int, total: int) -> bool:
        steps_after_cancel.append(step)
        return step >= 2

    plans = [make_plan(seed=1), make_plan(seed=2, prompt="a dog")]
    canceled, finished = engine.generate_batch(plans, [cancel_at_two, never])
    assert isinstance(canceled, GenerationCanceled) and (canceled.step, canceled.total_steps) \
        == (2, 4)
    assert steps_after_cancel == [1, 2]  # asked no more once it stopped
    [alone] = engine.generate(plans[1])
    [image] = images_of(finished)
    assert np.abs(pixels(image.image) - pixels(alone.image)).max() <= BATCH_PIXEL_TOLERANCE


def test_a_batch_whose_jobs_all_stop_is_interrupted(engine: GenerationEngine) -> None:
    calls: list[int] = []

    def stop_at_one(step: int, total: int) -> bool:
        calls.append(step)
        return True

    results = engine.generate_batch([make_plan(seed=1), make_plan(seed=2)],
                                    [stop_at_one, stop_at_one])
    assert all(isinstance(r, GenerationCanceled) and r.step == 1 for r in results)
    assert calls == [1, 1]  # the loop ended after the first step


def test_jobs_with_different_signatures_are_refused(engine: GenerationEngine) -> None:
    with pytest.raises(ValueError, match="batch signature"):
        engine.generate_batch([make_plan(steps=4), make_plan(steps=5)], [never, never])
