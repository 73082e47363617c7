"""The names the integration tests and their gated worker agree on (no imports: light)."""

from __future__ import annotations

# A job whose metadata holds this key (true) is held by the worker after its first step.
HOLD_METADATA_KEY = "hold"
RELEASE_SECONDS = 60
# A job whose metadata holds this key (true) fails in the pipeline at its first step, on
# every run: a poison job (the planner refuses every request that cannot run).
POISON_METADATA_KEY = "poison"


def release_key(job_id: str) -> str:
    """The Redis list the test pushes to, to let a held job go on."""
    return f"latentd-test:release:{job_id}"
