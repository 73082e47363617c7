"""Scheduler names a request may use → diffusers schedulers, built fresh for every run.

One loaded pipeline serves many jobs, so each run gets a new scheduler object made from
the model's *original* scheduler config: nothing a previous job chose (Karras sigmas,
a step counter inside a multistep solver) can leak into the next one.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

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
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from shared.schemas import FLOW_SCHEDULERS, SCHEDULERS


class KarrasSafeDPMSolverMultistepScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++ whose Karras schedule never repeats a timestep.

    With a cosine noise schedule (the embedded emoji model's) several high Karras sigmas
    map to the same integer timestep, and the solver's step index then runs off the end
    of its sigma table (diffusers issue #12771). Keeping one step per timestep avoids it.
    """

    timesteps: torch.Tensor
    sigmas: torch.Tensor
    num_inference_steps: int

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        timesteps = self.timesteps.cpu()
        keep = torch.ones(len(timesteps), dtype=torch.bool)
        keep[1:] = timesteps[1:] != timesteps[:-1]
        if not keep.all():
            self.timesteps = self.timesteps[keep.to(self.timesteps.device)]
            self.sigmas = torch.cat([self.sigmas[:-1][keep], self.sigmas[-1:]])
            self.num_inference_steps = len(self.timesteps)


class StableEulerAncestralDiscreteScheduler(EulerAncestralDiscreteScheduler):
    """Euler ancestral with its sigma table in float64.

    A cosine noise schedule starts near sigma 2e4; in float32 the ancestral split
    sigma_to² - sigma_up² rounds below zero there and the first step turns the latents
    into NaN (a black image). The latents themselves keep their own dtype.
    """

    sigmas: torch.Tensor

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        self.sigmas = self.sigmas.to(torch.float64)

# name → (class, the kwargs that make it that sampler). Every name sets Karras sigmas
# explicitly (where the class has them) so a model whose own config turns them on still
# gets plain sigmas when the request asks for the plain sampler.
_SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "lms": (LMSDiscreteScheduler, {"use_karras_sigmas": False}),
    "heun": (HeunDiscreteScheduler, {"use_karras_sigmas": False}),
    "euler": (EulerDiscreteScheduler, {"use_karras_sigmas": False}),
    "euler_ancestral": (StableEulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "dpmpp_2m_karras": (
        KarrasSafeDPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": (UniPCMultistepScheduler, {"use_karras_sigmas": False}),
    "flow_match_euler": (FlowMatchEulerDiscreteScheduler, {}),
    "flow_match_heun": (FlowMatchHeunDiscreteScheduler, {}),
    # DPM-Solver++ on the flow schedule (diffusers' flow_prediction mode), shifted as the
    # model's own scheduler is.
    "flow_match_dpmpp_2m": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_flow_sigmas": True,
         "prediction_type": "flow_prediction"},
    ),
}

# The names AUTOMATIC1111 writes in its "parameters" text, so tools that read A1111
# PNG metadata recognise the sampler.
A1111_SAMPLER_NAMES = {
    "ddpm": "DDPM",
    "ddim": "DDIM",
    "pndm": "PLMS",
    "lms": "LMS",
    "heun": "Heun",
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "unipc": "UniPC",
    "flow_match_euler": "Euler FlowMatch",
    "flow_match_heun": "Heun FlowMatch",
    "flow_match_dpmpp_2m": "DPM++ 2M FlowMatch",
}

assert set(_SCHEDULERS) == set(SCHEDULERS) == set(A1111_SAMPLER_NAMES), "scheduler table drift"


def is_flow_matching(base_config: Mapping[str, Any]) -> bool:
    """Flow-matching models (SD3, Flux) only work with their own scheduler family."""
    return "FlowMatch" in str(base_config.get("_class_name", ""))


def make_scheduler(name: str, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """A new scheduler ``name`` configured from the model's original scheduler config.

    A sampler of the other family than the model's is refused, never swapped silently:
    noise-prediction samplers make noise from a velocity model, and the other way round.
    (The plan refuses it at submit for models whose spec says so; this catches a spec
    that does not match the loaded weights.)
    """
    if name not in _SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {name!r}")
    if is_flow_matching(base_config) != (name in FLOW_SCHEDULERS):
        kind = "flow-matching" if is_flow_matching(base_config) else "noise-prediction"
        raise ValueError(
            f"scheduler '{name}' cannot drive this {kind} model; register the model with "
            "\"schedulers\" of its family in LATENTD_MODELS"
        )
    if name == FLOW_SCHEDULERS[0]:
        # The model's own flow-matching class and settings (shift, dynamic shifting).
        from diffusers import schedulers

        own_class = getattr(schedulers, str(base_config["_class_name"]))
        return own_class.from_config(base_config)
    scheduler_class, kwargs = _SCHEDULERS[name]
    if name == "flow_match_dpmpp_2m":
        kwargs = {**kwargs, "flow_shift": float(base_config.get("shift", 1.0))}
    accepted = inspect.signature(scheduler_class.__init__).parameters
    return scheduler_class.from_config(
        base_config, **{key: value for key, value in kwargs.items() if key in accepted}
    )
