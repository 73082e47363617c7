"""``/v1/models``: what can be generated here, and whether a worker is serving it."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import RedisDep, RegistryDep, StateDep
from api.services.status import ModelStatus, model_statuses

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("")
def list_models(
    registry: RegistryDep, redis_client: RedisDep, state: StateDep
) -> list[ModelStatus]:
    """Every registered model with its sizes, defaults and schedulers, the LoRAs and
    ControlNets that fit it, and live availability."""
    return model_statuses(registry, redis_client, state.adapters)
