"""The models one generation worker process holds, within a memory budget.

Without a budget (``LATENTD_WORKER_MEMORY_BUDGET`` unset) every served model loads at
process start and stays. With one, a model's size is measured once it has loaded (the
bytes of its modules' parameters and buffers, a module shared by its derived pipelines
counted once); a job for a model that is not loaded loads it then, first evicting the
least recently used models that no running job holds, until the new one fits.

A model never loaded here has no size yet: it is taken to need the whole budget, so the
process never holds more than the budget (at start, the first served model loads alone;
the others load on first demand, and from then on their measured sizes decide which fit
together). A model larger than the budget on its own still loads, alone, with a warning:
refusing it would leave its jobs failing forever.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from diffusers import DiffusionPipeline

from worker.pipelines import LoadedModel, ModelLoadError

logger = logging.getLogger(__name__)

# Called with the loaded models, most recently used first, after each load or eviction.
OnLoadedChange = Callable[[list[str]], None]


# After a model failed to load, jobs for it fail at once for this long instead of trying
# again: a try may first evict the models that do load (a model never loaded has no known
# size, so it gets the whole budget), and a broken model's jobs would otherwise cost every
# other model its place, and its next job a reload.
LOAD_RETRY_SECONDS = 60.0


class ModelCache(Mapping[str, LoadedModel]):
    """``served`` models, loaded by ``load(name)`` and kept within ``budget_bytes``
    (None: unlimited). As a mapping it holds the models loaded now."""

    def __init__(
        self,
        served: Sequence[str],
        load: Callable[[str], LoadedModel],
        budget_bytes: int | None = None,
        on_change: OnLoadedChange | None = None,
        retry_after_seconds: float = LOAD_RETRY_SECONDS,
    ):
        self.served = list(served)
        self.retry_after_seconds = retry_after_seconds
        # model -> (monotonic time of its last failed load, why it failed)
        self._failed: dict[str, tuple[float, str]] = {}
        self.budget_bytes = budget_bytes
        self.on_change = on_change
        self._load = load
        # Least recently used first: eviction takes from the front.
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._sizes: dict[str, int] = {}  # measured at load, remembered after eviction
        self._in_use: dict[str, int] = {}  # runs holding each model now
        # The loaded names, most recent first, replaced whole at each change: the heartbeat
        # thread reads it without the lock, which a load holds for as long as it takes (the
        # beats must go on meanwhile, or the running job looks abandoned).
        self._loaded: tuple[str, ...] = ()
        # One lock for the state and the loads: a load is the slow part, and a second job
        # wanting the same model must wait for it rather than load it twice.
        self._lock = threading.RLock()

    # -- Mapping: the models loaded now -----------------------------------------------

    def __getitem__(self, name: str) -> LoadedModel:
        return self._models[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._models))

    def __len__(self) -> int:
        return len(self._models)

    # -- what is held --------------------------------------------------------------------

    @property
    def loaded(self) -> list[str]:
        """The models loaded now, most recently used first (never waits for a load)."""
        return list(self._loaded)

    @property
    def loaded_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes[name] for name in self._models)

    def size_of(self, name: str) -> int | None:
        """``name``'s measured size in bytes (None: never loaded in this process)."""
        return self._sizes.get(name)

    # -- loading and eviction ------------------------------------------------------------

    def preload(self) -> None:
        """At process start: load the served models, in order, while they fit (all of them
        without a budget). Raises what the first model's load raises."""
        with self._lock:
            for name in self.served:
                if self._models and not self._fits_beside_loaded(name):
                    break
                self._load_model(name)
            self._changed()

    @contextmanager
    def use(self, name: str) -> Iterator[LoadedModel]:
        """Hold model ``name`` for one run: loaded now if it is not (evicting idle models
        to fit), and never evicted while the block runs."""
        with self._lock:
            if name not in self.served:
                served = ", ".join(self.served) or "none"
                raise ValueError(f"model '{name}' is not served here (serving: {served})")
            if name in self._models:
                self._models.move_to_end(name)
                self._loaded = tuple(reversed(self._models))
            else:
                self._refuse_if_failed_lately(name)
                self._make_room_for(name)
                self._load_model(name)
                self._changed()
            self._in_use[name] = self._in_use.get(name, 0) + 1
            model = self._models[name]
        try:
            yield model
        finally:
            with self._lock:
                self._in_use[name] -= 1
                if not self._in_use[name]:
                    del self._in_use[name]
                # Loads made while other models were held may have left the process over
                # budget: now that this run is done, give back what is idle, down to one
                # model (one larger than the budget stays, alone, for its next job).
                if self._evict_while(lambda: self._over_budget() and len(self._models) > 1):
                    self._changed()

    @contextmanager
    def use_all(self, names: Sequence[str]) -> Iterator[list[LoadedModel]]:
        """Hold every model of ``names`` for one run (a base and its refiner): each loaded
        in turn with the ones before it already held, so loading one never evicts another."""
        with ExitStack() as held:
            yield [held.enter_context(self.use(name)) for name in names]

    def _fits_beside_loaded(self, name: str) -> bool:
        if self.budget_bytes is None:
            return True
        size = self._sizes.get(name)
        return size is not None and self.loaded_bytes + size <= self.budget_bytes

    def _over_budget(self) -> bool:
        return self.budget_bytes is not None and self.loaded_bytes > self.budget_bytes

    def _make_room_for(self, name: str) -> None:
        if self.budget_bytes is None:
            return
        self._evict_while(lambda: bool(self._models) and not self._fits_beside_loaded(name))

    def _evict_while(self, needed: Callable[[], bool]) -> list[str]:
        """Evict idle models, least recently used first, while ``needed()``; returns them."""
        evicted: list[str] = []
        for victim in [name for name in self._models if name not in self._in_use]:
            if not needed():
                break
            model = self._models.pop(victim)
            self._loaded = tuple(reversed(self._models))
            evicted.append(victim)
            logger.info("evicted model %s (%s) to stay within the %s budget",
                        victim, _format_bytes(self._sizes[victim]),
                        _format_bytes(self.budget_bytes or 0))
            del model  # the last reference: what it held goes with the collection below
        if evicted:
            _free_memory()
        return evicted

    def _refuse_if_failed_lately(self, name: str) -> None:
        failed = self._failed.get(name)
        if failed is None:
            return
        failed_at, reason = failed
        ago = time.monotonic() - failed_at
        if ago < self.retry_after_seconds:
            raise ModelLoadError(
                f"model '{name}' failed to load {ago:.0f} s ago and is tried again "
                f"{self.retry_after_seconds - ago:.0f} s from now: {reason}")

    def _load_model(self, name: str) -> None:
        try:
            model = self._load(name)
        except Exception as exc:
            _free_memory()  # what the failed load had allocated
            self._failed[name] = (time.monotonic(), str(exc) or type(exc).__name__)
            raise
        self._failed.pop(name, None)
        size = model_bytes(model)
        self._sizes[name] = size
        self._models[name] = model
        self._loaded = tuple(reversed(self._models))
        budget = self.budget_bytes
        if budget is not None and size > budget:
            logger.warning("model %s needs %s, more than LATENTD_WORKER_MEMORY_BUDGET (%s): it "
                           "is loaded alone", name, _format_bytes(size), _format_bytes(budget))
        elif self._over_budget():
            logger.warning("holding %s, over the %s budget: models in use could not be evicted",
                           _format_bytes(self.loaded_bytes), _format_bytes(budget or 0))
        logger.info("model %s holds %s", name, _format_bytes(size))

    def _changed(self) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(self.loaded)
        except Exception:
            # Telling others (heartbeat, queue order) is best effort: the job goes on.
            logger.exception("could not announce the loaded models %s", self.loaded)


def model_bytes(model: LoadedModel) -> int:
    """Bytes of ``model``'s parameters and buffers: every module of every pipeline it
    holds, each tensor storage counted once (derived pipelines share their modules, and
    tied weights share a storage)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for module in _modules(vars(model).values()):
        for tensor in (*module.parameters(), *module.buffers()):
            storage = tensor.untyped_storage()
            key = (str(tensor.device), storage.data_ptr() or id(tensor))
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return total


def _modules(values: Iterable[Any]) -> Iterator[torch.nn.Module]:
    """The distinct torch modules among ``values``: pipelines' components, modules, and
    mappings or lists of either (what a LoadedModel may hold)."""
    seen: set[int] = set()
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, DiffusionPipeline):
            stack.extend(value.components.values())
        elif isinstance(value, torch.nn.Module):
            if id(value) not in seen:
                seen.add(id(value))
                yield value
        elif isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)


def _free_memory() -> None:
    # Pipelines hold reference cycles (components point back at their pipeline's config):
    # collect them now, then hand CUDA's cached blocks back so other processes (and the
    # next model) can have them. empty_cache does nothing where CUDA was never used.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
