"""The training loop both stages share: schedule, EMA, progress, time budget, checkpoints, resume."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

# Steps skipped before timing the stage: the first ones pay for allocator warm-up (and
# cuDNN autotuning on a GPU), so they would overstate the time per step.
_UNTIMED_STEPS = 5
_TIMED_STEPS = 20
# Reading the loss waits for the GPU; doing it every step would stop the CPU from queueing
# the next step's kernels while the current ones run.
_LOSS_READ_EVERY = 10
# When a time budget forces fewer steps, keep this much slack for checkpoints and export.
_BUDGET_SAFETY = 0.92


@dataclass
class StageSettings:
    """What one stage trains for; every field comes from a CLI flag."""

    name: str
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    checkpoint_every: int
    max_minutes: float | None
    weight_decay: float = 0.01
    grad_clip: float = 1.0


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, floor: float = 0.05) -> float:
    """LR multiplier: linear warm-up, then cosine decay to `floor` at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class ExponentialMovingAverage:
    """fp32 shadow of a model's parameters; the exported UNet uses these, not the raw ones."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in model.parameters()]

    def update(self, model: torch.nn.Module, step: int) -> None:
        # Ramp the decay up so early steps are not averaged with the random init for ~1/(1-decay)
        # steps, which would waste most of a short CPU run.
        decay = min(self.decay, (1 + step) / (10 + step))
        params = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(self.shadow, params, 1 - decay)

    def copy_to(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            for target, value in zip(model.parameters(), self.shadow):
                target.copy_(value)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        for target, value in zip(self.shadow, state["shadow"]):
            target.copy_(value)


def autocast_for(device: torch.device, bf16: bool) -> AbstractContextManager:
    if not bf16:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass
class StageResult:
    steps_done: int
    seconds: float
    finished: bool  # False when stopped by the time budget before the planned steps


class StageRunner:
    """Drives one stage: LR schedule, optimiser step, EMA, progress bar, checkpoints, resume.

    `compute_loss(step)` returns the loss of one fresh batch; `export()` writes the
    current weights where the service reads them. Training state (weights, optimiser,
    EMA, sampler RNG, step, planned total) lives in `state_path` for --resume.
    """

    def __init__(
        self,
        settings: StageSettings,
        model: torch.nn.Module,
        compute_loss: Callable[[int], torch.Tensor],
        export: Callable[[], None],
        state_path: Path,
        generator: torch.Generator,
        ema: ExponentialMovingAverage | None = None,
    ):
        self.settings = settings
        self.model = model
        self.compute_loss = compute_loss
        self.export = export
        self.state_path = state_path
        self.generator = generator
        self.ema = ema
        self.optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=settings.learning_rate,
            weight_decay=settings.weight_decay,
            betas=(0.9, 0.99),
            # One fused kernel instead of a few hundred launches: on a GPU the small models
            # here are bound by launch overhead, not arithmetic.
            fused=next(model.parameters()).is_cuda,
        )
        self.total_steps = settings.steps
        self.step = 0

    # -- resume -----------------------------------------------------------------

    def save_state(self) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "generator": self.generator.get_state(),
            "step": self.step,
            "total_steps": self.total_steps,
        }
        staging = self.state_path.with_suffix(".tmp")
        torch.save(state, staging)
        staging.replace(self.state_path)

    def load_state(self) -> bool:
        """Restore a saved state if there is one; True when it did."""
        if not self.state_path.is_file():
            return False
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        self.generator.set_state(state["generator"])
        self.step, self.total_steps = state["step"], state["total_steps"]
        return True

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    # -- training -----------------------------------------------------------------

    def run(self) -> StageResult:
        settings = self.settings
        budget_s = settings.max_minutes * 60 if settings.max_minutes else math.inf
        started = time.monotonic()
        timing_start: float | None = None
        first_step = self.step
        smoothed_loss = None
        self.model.train()
        progress = tqdm(
            total=self.total_steps, initial=self.step, desc=settings.name, dynamic_ncols=True
        )
        stopped_by_budget = False
        while not self.done:
            if time.monotonic() - started > budget_s:
                stopped_by_budget = True
                break
            loss = self._train_one_step()
            self.step += 1
            progress.update(1)
            if self.step % _LOSS_READ_EVERY == 0:
                value = loss.item()
                smoothed_loss = (
                    value if smoothed_loss is None else 0.9 * smoothed_loss + 0.1 * value
                )
                progress.set_postfix(loss=f"{smoothed_loss:.4f}", lr=f"{self._lr():.2e}")

            steps_run = self.step - first_step
            if steps_run == _UNTIMED_STEPS:
                self._wait_for_device()
                timing_start = time.monotonic()
            elif steps_run == _UNTIMED_STEPS + _TIMED_STEPS and timing_start is not None:
                self._wait_for_device()
                per_step = (time.monotonic() - timing_start) / _TIMED_STEPS
                self._fit_plan_to_budget(per_step, budget_s - (time.monotonic() - started))
                progress.total = self.total_steps
                progress.refresh()
            if self.step % settings.checkpoint_every == 0 and not self.done:
                self.checkpoint()
        progress.close()
        self.checkpoint()
        if stopped_by_budget:
            tqdm.write(f"[{settings.name}] time budget of {settings.max_minutes} min reached")
        return StageResult(self.step, time.monotonic() - started, finished=self.done)

    def checkpoint(self) -> None:
        self.save_state()
        self.export()

    def _wait_for_device(self) -> None:
        """Let queued GPU work finish so wall-clock timing measures it."""
        if next(self.model.parameters()).is_cuda:
            torch.cuda.synchronize()

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _train_one_step(self) -> torch.Tensor:
        settings = self.settings
        # A plan cut short by the time budget keeps a proportionate warm-up.
        warmup = min(settings.warmup_steps, max(1, self.total_steps // 10))
        factor = warmup_cosine(self.step, self.total_steps, warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = settings.learning_rate * factor
        loss = self.compute_loss(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), settings.grad_clip)
        self.optimizer.step()
        if self.ema:
            self.ema.update(self.model, self.step)
        return loss.detach()

    def _fit_plan_to_budget(self, seconds_per_step: float, seconds_left: float) -> None:
        """Print the stage's projected time; shorten the plan if the budget can't hold it.

        Shortening (rather than just stopping at the deadline) lets the cosine schedule
        reach its low-LR tail, which is where most of the final quality comes from.
        """
        steps_left = self.total_steps - self.step
        projected_min = steps_left * seconds_per_step / 60
        message = (
            f"[{self.settings.name}] {seconds_per_step:.3f} s/step, "
            f"{steps_left} steps left ≈ {projected_min:.1f} min"
        )
        affordable = seconds_left * _BUDGET_SAFETY / seconds_per_step
        if affordable < steps_left:
            self.total_steps = self.step + max(1, int(affordable))
            message += f"; over the time budget, plan cut to {self.total_steps} steps"
        tqdm.write(message)
