"""Scheduler names → diffusers schedulers, always fresh and never carrying another job's options."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from shared.schemas import NOISE_SCHEDULERS, SCHEDULERS
from worker.schedulers import make_scheduler

EXPECTED_CLASSES = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "lms": LMSDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "dpmpp_2m_karras": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "flow_match_euler": FlowMatchEulerDiscreteScheduler,
    "flow_match_heun": FlowMatchHeunDiscreteScheduler,
    "flow_match_dpmpp_2m": DPMSolverMultistepScheduler,
}


@pytest.fixture
def base_config(tiny_model):
    return tiny_model.scheduler_config


def test_every_request_name_has_a_scheduler() -> None:
    assert set(EXPECTED_CLASSES) == set(SCHEDULERS)


@pytest.mark.parametrize("name", NOISE_SCHEDULERS)
def test_name_maps_to_class_and_keeps_the_models_noise_schedule(name: str, base_config) -> None:
    scheduler = make_scheduler(name, base_config)
    assert isinstance(scheduler, EXPECTED_CLASSES[name])
    assert scheduler.config.beta_schedule == base_config["beta_schedule"] == "scaled_linear"
    assert scheduler.config.beta_end == base_config["beta_end"]


def test_dpmpp_2m_variants_differ_only_in_karras_sigmas(base_config) -> None:
    karras = make_scheduler("dpmpp_2m_karras", base_config)
    plain = make_scheduler("dpmpp_2m", dict(karras.config))  # even from a Karras config
    assert karras.config.use_karras_sigmas is True
    assert plain.config.use_karras_sigmas is False
    assert karras.config.algorithm_type == plain.config.algorithm_type == "dpmsolver++"
    assert karras.config.solver_order == plain.config.solver_order == 2


def test_each_call_builds_a_new_object(base_config) -> None:
    first, second = make_scheduler("euler", base_config), make_scheduler("euler", base_config)
    assert first is not second
    first.set_timesteps(10)
    assert second.timesteps is None or len(second.timesteps) != 10


def test_flow_matching_models_run_their_own_scheduler_with_its_settings() -> None:
    config = dict(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    config["_class_name"] = "FlowMatchEulerDiscreteScheduler"
    scheduler = make_scheduler("flow_match_euler", config)
    assert type(scheduler) is FlowMatchEulerDiscreteScheduler
    assert scheduler.config.shift == 3.0


def test_flow_dpmpp_2m_runs_on_flow_sigmas_with_the_models_shift() -> None:
    config = dict(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    config["_class_name"] = "FlowMatchEulerDiscreteScheduler"
    scheduler = make_scheduler("flow_match_dpmpp_2m", config)
    assert type(scheduler) is DPMSolverMultistepScheduler
    assert scheduler.config.use_flow_sigmas and scheduler.config.flow_shift == 3.0
    assert scheduler.config.prediction_type == "flow_prediction"
    assert type(make_scheduler("flow_match_heun", config)) is FlowMatchHeunDiscreteScheduler


def test_a_sampler_of_the_other_family_is_refused_not_swapped(base_config) -> None:
    flow = {**dict(FlowMatchEulerDiscreteScheduler().config),
            "_class_name": "FlowMatchEulerDiscreteScheduler"}
    with pytest.raises(ValueError, match="'ddim' cannot drive this flow-matching model"):
        make_scheduler("ddim", flow)
    with pytest.raises(ValueError, match="'flow_match_euler' cannot drive this noise-prediction"):
        make_scheduler("flow_match_euler", base_config)


def test_unknown_name_is_refused(base_config) -> None:
    with pytest.raises(ValueError, match="scheduler must be one of"):
        make_scheduler("k_dpm_fast", base_config)


@pytest.fixture
def cosine_config() -> dict:
    """The embedded emoji model's kind of schedule: cosine betas, v-prediction, trailing."""
    return dict(DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                              timestep_spacing="trailing", set_alpha_to_one=True,
                              steps_offset=1).config)


def denoise(scheduler, steps: int) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator) * scheduler.init_noise_sigma
    for timestep in scheduler.timesteps:
        scheduler.scale_model_input(sample, timestep)
        model_output = torch.randn(1, 4, 8, 8, generator=generator)
        sample = scheduler.step(model_output, timestep, sample, generator=generator).prev_sample
    return sample


@pytest.mark.parametrize("steps", [3, 10, 20, 30])
def test_dpmpp_2m_karras_survives_a_cosine_schedule(cosine_config, steps: int) -> None:
    # Plain diffusers repeats timesteps here and indexes past its sigma table (issue #12771).
    scheduler = make_scheduler("dpmpp_2m_karras", cosine_config)
    sample = denoise(scheduler, steps)
    assert torch.isfinite(sample).all()
    assert (scheduler.timesteps[1:] < scheduler.timesteps[:-1]).all()
    assert len(scheduler.sigmas) == len(scheduler.timesteps) + 1


@pytest.mark.parametrize("steps", [2, 3, 5])
def test_euler_ancestral_gives_no_nan_on_a_cosine_schedule(cosine_config, steps: int) -> None:
    # In float32 the first ancestral split of sigma ~2e4 takes the root of a negative number.
    sample = denoise(make_scheduler("euler_ancestral", cosine_config), steps)
    assert torch.isfinite(sample).all() and sample.dtype == torch.float32
