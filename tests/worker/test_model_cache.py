"""The model cache with real tiny pipelines: a budget, least-recently-used eviction, models
in use kept, a model larger than the budget loaded alone, sizes of shared modules counted
once."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from shared.model_registry import ModelRegistry
from shared.settings import Settings
from tests.factories import make_plan
from worker.engine import GenerationEngine
from worker.model_cache import ModelCache, model_bytes
from worker.pipelines import LoadedModel, ModelLoadError, load_pipeline
from worker.queue_order import loaded_first, queues_to_move

# Three names for the same built-in source: three separately loaded, equal-sized models.
NAMES = ["tiny-random", "tiny-b", "tiny-c"]
SETTINGS = Settings(
    torch_threads=1, default_model="tiny-random", worker_models=NAMES,
    models={name: {"source": "builtin:tiny-random", "min_width": 24, "min_height": 24,
                   "default_width": 64, "default_height": 64, "default_steps": 2}
            for name in NAMES[1:]},
)
REGISTRY = ModelRegistry.from_settings(SETTINGS)


class CountingLoader:
    """Loads through the real loader and records the order of loads."""

    def __init__(self) -> None:
        self.loads: list[str] = []

    def __call__(self, name: str) -> LoadedModel:
        self.loads.append(name)
        return load_pipeline(REGISTRY.get(name), SETTINGS)


@pytest.fixture(scope="module")
def model_size(tiny_model: LoadedModel) -> int:
    return model_bytes(tiny_model)


def cache_for(budget: int | None, served: list[str] = NAMES) -> tuple[ModelCache, CountingLoader]:
    loader = CountingLoader()
    return ModelCache(served, loader, budget), loader


def test_size_is_every_parameter_and_buffer_once(tiny_model: LoadedModel) -> None:
    pipe = tiny_model.text_to_image
    modules = [pipe.unet, pipe.vae, pipe.text_encoder]
    by_hand = sum(t.numel() * t.element_size()
                  for m in modules for t in {id(t): t for t in
                                             (*m.parameters(), *m.buffers())}.values())
    # The image-to-image and inpaint pipelines share these modules: counted once, not 3x.
    assert tiny_model.image_to_image is not None and tiny_model.inpaint is not None
    assert tiny_model.inpaint.unet is pipe.unet
    assert model_bytes(tiny_model) == by_hand
    assert 1_000_000 < by_hand < 20_000_000  # tiny-random is about 5 MB of float32


def test_without_a_budget_every_model_loads_at_start_and_stays() -> None:
    cache, loader = cache_for(None, NAMES[:2])
    cache.preload()
    assert loader.loads == NAMES[:2] and set(cache) == set(NAMES[:2])
    for name in (*NAMES[:2], *NAMES[:2]):
        with cache.use(name) as model:
            assert model.spec.name == name
    assert loader.loads == NAMES[:2]


def test_a_budget_keeps_the_least_recently_used_model_out(model_size: int) -> None:
    cache, loader = cache_for(2 * model_size + model_size // 2)  # fits two, not three
    cache.preload()
    # Sizes are unknown until a model has loaded: the first loads alone at start.
    assert cache.loaded == ["tiny-random"]
    with cache.use("tiny-b"):  # unknown size: taken to need the whole budget
        pass
    assert cache.loaded == ["tiny-b"]
    with cache.use("tiny-random"):  # both sizes known now, and they fit together
        pass
    assert cache.loaded == ["tiny-random", "tiny-b"]
    with cache.use("tiny-c"):
        pass
    assert cache.loaded == ["tiny-c"]
    with cache.use("tiny-b"), cache.use("tiny-random"):  # tiny-b is held: tiny-c goes
        pass
    assert cache.loaded == ["tiny-random", "tiny-b"]
    # tiny-b was used before tiny-random: it is the one tiny-c evicts.
    with cache.use("tiny-c"):
        pass
    assert cache.loaded == ["tiny-c", "tiny-random"]
    assert cache.loaded_bytes == 2 * model_size <= (cache.budget_bytes or 0)
    assert loader.loads == ["tiny-random", "tiny-b", "tiny-random", "tiny-c", "tiny-b",
                            "tiny-random", "tiny-c"]


def test_lru_order_follows_use_not_load(model_size: int) -> None:
    cache, _ = cache_for(2 * model_size + model_size // 2)
    cache.preload()
    for name in ("tiny-b", "tiny-c"):  # each of unknown size: loads alone, size learnt
        with cache.use(name):
            pass
    assert cache.loaded == ["tiny-c"]
    with cache.use("tiny-random"):  # fits beside tiny-c
        pass
    with cache.use("tiny-c"):  # used again: tiny-random, loaded last, is now least recent
        pass
    assert cache.loaded == ["tiny-c", "tiny-random"]
    with cache.use("tiny-b"):
        pass
    assert cache.loaded == ["tiny-b", "tiny-c"]


def test_a_model_in_use_is_never_evicted(model_size: int) -> None:
    cache, _ = cache_for(model_size + model_size // 2)  # fits one
    cache.preload()
    with cache.use("tiny-random") as held:
        # A second run wants another model while the first still runs: both are held,
        # over budget, rather than pulling weights from under a running job.
        with cache.use("tiny-b"):
            assert set(cache) == {"tiny-random", "tiny-b"}
            assert held.text_to_image.unet is cache["tiny-random"].text_to_image.unet
        assert "tiny-random" in cache
    # Once the runs are over the cache is back within its budget.
    assert len(cache) == 1 and cache.loaded_bytes <= (cache.budget_bytes or 0)


def test_a_model_larger_than_the_budget_loads_alone(
    model_size: int, caplog: pytest.LogCaptureFixture
) -> None:
    cache, loader = cache_for(model_size // 2)
    cache.preload()
    assert cache.loaded == ["tiny-random"]
    assert "more than LATENTD_WORKER_MEMORY_BUDGET" in caplog.text
    with cache.use("tiny-b") as model:
        assert cache.loaded == ["tiny-b"] and model.spec.name == "tiny-b"
    # It stays loaded after its run: the next job for it does not load it again.
    with cache.use("tiny-b"):
        pass
    assert cache.loaded == ["tiny-b"] and loader.loads == ["tiny-random", "tiny-b"]


def test_the_loaded_list_answers_while_a_load_is_under_way(tiny_model: LoadedModel) -> None:
    # The heartbeat thread reads it at every beat: a slow load must not stop the beats.
    loading, release = threading.Event(), threading.Event()

    def slow_load(name: str) -> LoadedModel:
        if name == "tiny-b":
            loading.set()
            release.wait(10)
        return tiny_model

    cache = ModelCache(["tiny-random", "tiny-b"], slow_load, budget_bytes=10**9)
    cache.preload()

    def run_b() -> None:
        with cache.use("tiny-b"):
            pass

    job = threading.Thread(target=run_b)
    job.start()
    try:
        assert loading.wait(10)
        started = time.monotonic()
        assert cache.loaded == []  # tiny-random made room; tiny-b is not loaded yet
        assert time.monotonic() - started < 1
    finally:
        release.set()
        job.join()
    assert cache.loaded == ["tiny-b"]


def test_an_evicted_model_is_freed(model_size: int) -> None:
    cache, _ = cache_for(model_size + model_size // 2)
    cache.preload()
    unet = weakref.ref(cache["tiny-random"].text_to_image.unet)
    with cache.use("tiny-b"):
        pass
    gc.collect()
    assert unet() is None and cache.loaded == ["tiny-b"]


def test_a_model_not_served_is_refused_and_a_failed_load_changes_nothing() -> None:
    cache, _ = cache_for(None, ["tiny-random"])
    with pytest.raises(ValueError, match="not served here"), cache.use("emoji"):
        pass

    def failing(name: str) -> LoadedModel:
        raise RuntimeError("disk on fire")

    broken = ModelCache(["tiny-random"], failing, 10**9)
    with pytest.raises(RuntimeError, match="disk on fire"), broken.use("tiny-random"):
        pass
    assert broken.loaded == [] and broken.size_of("tiny-random") is None


class BreakingLoader(CountingLoader):
    """The real loader, except that "broken" never loads."""

    def __call__(self, name: str) -> LoadedModel:
        if name == "broken":
            self.loads.append(name)
            raise ModelLoadError("weights missing")
        return super().__call__(name)


def test_a_model_that_failed_to_load_is_not_tried_again_for_a_while(model_size: int) -> None:
    loader = BreakingLoader()
    cache = ModelCache(["tiny-random", "broken"], loader, model_size + model_size // 2)
    cache.preload()
    with pytest.raises(ModelLoadError, match="weights missing"), cache.use("broken"):
        pass
    # Its size unknown, the first try made room for it: the good model went.
    assert cache.loaded == []
    with cache.use("tiny-random"):
        pass
    for _ in range(3):  # within the retry delay: refused at once, nothing evicted or loaded
        with pytest.raises(ModelLoadError, match=r"failed to load \d+ s ago.*weights missing"), \
                cache.use("broken"):
            pass
    assert cache.loaded == ["tiny-random"]
    assert loader.loads == ["tiny-random", "broken", "tiny-random"]


def test_a_failed_model_is_tried_again_after_the_delay(model_size: int) -> None:
    loader = BreakingLoader()
    cache = ModelCache(["tiny-random", "broken"], loader, None, retry_after_seconds=1.0)
    with pytest.raises(ModelLoadError), cache.use("broken"):
        pass
    with pytest.raises(ModelLoadError, match="tried again"), cache.use("broken"):
        pass
    time.sleep(1.1)
    with pytest.raises(ModelLoadError, match="^weights missing$"), cache.use("broken"):
        pass
    assert loader.loads == ["broken", "broken"]


def test_on_change_sees_each_load_and_eviction(model_size: int) -> None:
    seen: list[list[str]] = []
    cache = ModelCache(NAMES[:2], CountingLoader(), model_size + model_size // 2,
                       on_change=seen.append)
    cache.preload()
    with cache.use("tiny-b"):
        pass
    with cache.use("tiny-b"):  # already loaded: nothing changes
        pass
    assert seen == [["tiny-random"], ["tiny-b"]]


def test_the_engine_runs_jobs_through_the_cache(model_size: int) -> None:
    cache, loader = cache_for(model_size + model_size // 2, NAMES[:2])
    cache.preload()
    engine = GenerationEngine(cache)
    results = {}
    for name in ("tiny-random", "tiny-b", "tiny-random"):
        plan = make_plan(model=name, width=32, height=32, steps=2, seeds=[7])
        with cache.use(name):
            [results[name]] = engine.generate(plan)
        assert cache.loaded == [name]
    assert loader.loads == ["tiny-random", "tiny-b", "tiny-random"]
    # The same built-in weights and seed: the reloaded model draws the same image.
    assert results["tiny-random"].image.tobytes() == results["tiny-b"].image.tobytes()


def test_concurrent_runs_of_one_model_load_it_once(model_size: int) -> None:
    cache, loader = cache_for(model_size + model_size // 2, NAMES[:2])
    cache.preload()
    with cache.use("tiny-b"):
        pass
    errors: list[Exception] = []

    def run() -> None:
        try:
            with cache.use("tiny-random") as model:
                assert model.spec.name == "tiny-random"
        except Exception as exc:  # noqa: BLE001 (reported below, in the test's thread)
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and loader.loads.count("tiny-random") == 2  # at start, then once


def test_loaded_first_keeps_each_group_in_order() -> None:
    queues = ["gen.a", "gen.b", "gen.c", "gen.d"]
    assert loaded_first(queues, {"gen.c", "gen.a"}) == ["gen.a", "gen.c", "gen.b", "gen.d"]
    assert loaded_first(queues, set()) == queues


def test_queues_to_move_re_adds_from_the_first_out_of_place() -> None:
    assert queues_to_move(["a", "b", "c"], ["a", "b", "c"]) == []
    assert queues_to_move(["a", "b", "c"], ["c", "a", "b"]) == ["c", "a", "b"]
    assert queues_to_move(["a", "b", "c"], ["a", "c", "b"]) == ["c", "b"]
    # Cancelling and re-adding those, in order, appends them: the wanted order results.
    current = ["a", "b", "c", "d"]
    wanted = ["a", "d", "b", "c"]
    moved = queues_to_move(current, wanted)
    assert [q for q in current if q not in moved] + moved == wanted


def test_a_base_and_its_refiner_are_held_together(model_size: int) -> None:
    cache, loader = cache_for(model_size + model_size // 2, NAMES[:2])  # fits one
    cache.preload()
    with cache.use_all(["tiny-random", "tiny-b"]) as (base, refiner):
        # Loading the refiner evicted nothing the run holds: both are there, over budget.
        assert (base.spec.name, refiner.spec.name) == ("tiny-random", "tiny-b")
        assert set(cache) == {"tiny-random", "tiny-b"}
    assert len(cache) == 1 and loader.loads == ["tiny-random", "tiny-b"]
