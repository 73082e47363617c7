"""Small builders of valid shared objects for tests; override any field by keyword."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from shared.records import JobRecord
from shared.schemas import JobPlan, JobStatus


def make_plan(seed: int | None = None, **overrides: Any) -> JobPlan:
    """A tiny text-to-image plan: tiny-random, 64x64, 4 ddim steps, seed 1, png, normal.

    ``seed=N`` (without ``seeds``) gives each of ``num_images`` images N, N+1, ... as the
    service's plan does.
    """
    if "seeds" not in overrides:
        first = 1 if seed is None else seed
        overrides["seeds"] = [first + i for i in range(int(overrides.get("num_images", 1)))]
    fields: dict[str, Any] = {
        "task": "text-to-image", "model": "tiny-random", "prompt": "a cat",
        "negative_prompt": None, "width": 64, "height": 64, "num_images": 1, "steps": 4,
        "guidance_scale": 5.0, "scheduler": "ddim", "seeds": [1], "strength": None,
        "outpaint": None, "output_format": "png", "priority": "normal", "webhook": None,
    }
    return JobPlan.model_validate({**fields, **overrides})


def make_record(**overrides: Any) -> JobRecord:
    """A new queued job of owner "public" running ``make_plan()``; ``request=`` to change it."""
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "id": "job_" + secrets.token_hex(12), "owner": "public", "status": JobStatus.QUEUED,
        "created_at": now, "updated_at": now, "request": make_plan(),
    }
    return JobRecord.model_validate({**fields, **overrides})
