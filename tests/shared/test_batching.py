"""The batch signature: what must match for jobs to share a pipeline call."""

from __future__ import annotations

import pytest

from shared.batching import batch_signature
from shared.schemas import OutputFormat, Priority
from tests.factories import make_plan


def test_per_image_and_after_the_call_values_do_not_change_it() -> None:
    base = batch_signature(make_plan())
    assert base is not None
    assert batch_signature(make_plan(prompt="something else", seed=99, num_images=3)) == base
    assert batch_signature(make_plan(output_format=OutputFormat.JPEG,
                                     priority=Priority.HIGH)) == base
    with_negative = batch_signature(make_plan(negative_prompt="blurry"))
    assert batch_signature(make_plan(negative_prompt="text")) == with_negative


@pytest.mark.parametrize("change", [
    {"steps": 5}, {"width": 96}, {"height": 96}, {"guidance_scale": 3.0},
    {"scheduler": "euler_ancestral"}, {"model": "emoji"}, {"negative_prompt": "blurry"},
])
def test_what_shapes_the_call_changes_it(change: dict) -> None:
    assert batch_signature(make_plan(**change)) != batch_signature(make_plan())


def test_refined_jobs_run_alone() -> None:
    plan = make_plan(model="sdxl", refiner={"model": "refiner", "switch_at": 0.8,
                                            "aesthetic_score": 6.0,
                                            "negative_aesthetic_score": 2.5})
    assert batch_signature(plan) is None


@pytest.mark.parametrize("change", [
    {"true_cfg_scale": 4.0}, {"guidance": "distilled"}, {"aesthetic_score": 6.0},
])
def test_the_other_guidance_inputs_change_it(change: dict) -> None:
    assert batch_signature(make_plan(**change)) != batch_signature(make_plan())


def test_image_tasks_run_alone() -> None:
    plan = make_plan(task="image-to-image", strength=0.5)
    assert batch_signature(plan) is None
