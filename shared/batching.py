"""Which jobs can share one pipeline call: the batch signature of a plan.

Two queued jobs with the same signature can be denoised together, one batch of latents
through one UNet call per step, and each image still equals the one its job would get
alone (each image keeps its own seeded generator; only the last bits of the batched
matmuls may differ). The signature holds everything that shapes the pipeline call
itself: model, task, size, steps, scheduler, guidance (its kind and scale, true CFG,
aesthetic scores), strength, the LoRAs with their scales, and whether a negative
prompt is given (SDXL-family pipelines encode a missing one as zeros, not as ""). A job
handed to a refiner runs alone (two pipeline calls), and so does a ControlNet job (its
control images are its own). What
may differ per job is what diffusers takes per image: prompt, negative prompt, seed,
number of images; and what happens after the call (output format, webhook, priority).

One pure function, so the API (which files each queued job under its signature) and the
worker (which claims companions by it) cannot disagree; whatever later changes the
pipeline call (adapters, per-job options) must be added here.
"""

from __future__ import annotations

import hashlib
import json

from shared.schemas import JobPlan, Task

# Tasks whose jobs are batched. The image tasks carry a different init image (and mask)
# per job, which the engine does not yet stack into one call: they run one job a call.
BATCHED_TASKS = frozenset({Task.TEXT_TO_IMAGE})


def batch_signature(plan: JobPlan) -> str | None:
    """The key jobs share when one pipeline call can run them together; ``None`` when the
    job always runs alone."""
    # A ControlNet job carries its own control images, which the engine does not stack.
    if plan.task not in BATCHED_TASKS or plan.refiner is not None or plan.control:
        return None
    shared_call = {
        "model": plan.model,
        "task": plan.task.value,
        "width": plan.width,
        "height": plan.height,
        "steps": plan.steps,
        "guidance": plan.guidance.value,
        "guidance_scale": plan.guidance_scale,
        "true_cfg_scale": plan.true_cfg_scale,
        "aesthetic_score": plan.aesthetic_score,
        "negative_aesthetic_score": plan.negative_aesthetic_score,
        "scheduler": plan.scheduler,
        "strength": plan.strength,
        "outpaint": plan.outpaint.model_dump() if plan.outpaint is not None else None,
        "negative_prompt": plan.negative_prompt is not None,
        # LoRAs act on the shared modules for the whole call: the same ones, same scales.
        "loras": [[lora.name, lora.scale] for lora in plan.loras],
    }
    text = json.dumps(shared_call, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]
