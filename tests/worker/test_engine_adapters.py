"""LoRA and ControlNet through the engine, on tiny random pipelines: real PEFT adapters
and real ControlNetModels saved to a tmp folder, loaded as the worker loads them."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.adapters import Adapters, base_unet_config
from shared.model_registry import BUILTIN_MODELS, TINY_RANDOM, ModelSpec
from shared.plan import plan_job
from shared.schemas import GenerationRequest, JobPlan, LoraRequest
from shared.settings import Settings
from tests.adapter_weights import (
    build_tiny_sdxl_pipeline,
    save_tiny_controlnet,
    save_tiny_lora,
)
from worker.engine import GenerationCanceled, GenerationEngine
from worker.images import parameters_text
from worker.model_cache import ModelCache
from worker.pipelines import build_tiny_random_pipeline, load_pipeline

TINY_XL = "tiny-xl"
SIZE = 64


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    xl_folder = root / TINY_XL
    xl = build_tiny_sdxl_pipeline()
    xl.save_pretrained(xl_folder)
    save_tiny_lora(root / "loras", "ink", seed=1)
    save_tiny_lora(root / "loras", "paper", seed=2)
    save_tiny_lora(root / "loras", "xl-ink", seed=3, unet=build_tiny_sdxl_pipeline().unet)
    return {
        "loras": root / "loras",
        "edges": save_tiny_controlnet(root / "edges", seed=0),
        "depth": save_tiny_controlnet(root / "depth", seed=1),
        "xl-edges": save_tiny_controlnet(root / "xl-edges", seed=0, unet=xl.unet),
        TINY_XL: xl_folder,
    }


@pytest.fixture(scope="module")
def xl_spec(weights) -> ModelSpec:
    return ModelSpec(name=TINY_XL, source=str(weights[TINY_XL]), default_width=SIZE,
                     default_height=SIZE, min_width=24, min_height=24, default_steps=3,
                     default_scheduler="euler")


@pytest.fixture(scope="module")
def adapters(weights) -> Adapters:
    return Adapters.from_sources(weights["loras"], {
        name: str(weights[name]) for name in ("edges", "depth", "xl-edges", TINY_XL)})


@pytest.fixture(scope="module")
def engine(adapters, xl_spec) -> GenerationEngine:
    # Its own models: LoRA layers stay in a model's modules, the session's stay plain.
    settings = Settings(torch_threads=1)
    return GenerationEngine({
        TINY_RANDOM: load_pipeline(BUILTIN_MODELS[TINY_RANDOM], settings),
        TINY_XL: load_pipeline(xl_spec, settings),
    }, adapters)


def plan(adapters: Adapters, spec: ModelSpec = BUILTIN_MODELS[TINY_RANDOM], **fields) -> JobPlan:
    request = GenerationRequest.model_validate(
        {"prompt": "a red fox", "seed": 7, "steps": 3, "width": SIZE, "height": SIZE,
         "model": spec.name, **fields})
    init = (SIZE, SIZE) if request.init_image is not None else None
    return plan_job(request, spec, init_size=init, random_seed=0, adapters=adapters).plan


def control_image(kind: str = "stripes") -> Image.Image:
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    if kind == "stripes":
        pixels[:, ::8] = 255
    else:
        pixels[SIZE // 4: 3 * SIZE // 4, SIZE // 4: 3 * SIZE // 4] = 255
    return Image.fromarray(pixels)


def pixels(engine: GenerationEngine, job: JobPlan, **kwargs) -> np.ndarray:
    return np.asarray(engine.generate(job, **kwargs)[0].image, dtype=np.int16)


def control(model: str = "edges", **fields) -> dict:
    # The plan takes the image as text; the engine is handed the decoded, sized image.
    return {"model": model, "image": "unused-here", **fields}


@pytest.fixture(scope="module")
def plain(engine, adapters) -> np.ndarray:
    return pixels(engine, plan(adapters))


# -- LoRA ---------------------------------------------------------------------------------


def test_lora_at_scale_zero_is_no_lora_and_at_scale_one_changes_the_image(
        engine, adapters, plain):
    zero = pixels(engine, plan(adapters, loras=[{"name": "ink", "scale": 0.0}]))
    one = pixels(engine, plan(adapters, loras=[{"name": "ink", "scale": 1.0}]))
    assert np.array_equal(zero, plain)
    assert np.abs(one - plain).max() > 10


def test_a_job_after_a_lora_job_has_no_lora(engine, adapters, plain):
    pixels(engine, plan(adapters, loras=[{"name": "ink", "scale": 1.0}]))
    assert np.array_equal(pixels(engine, plan(adapters)), plain)


def test_a_canceled_lora_run_leaves_no_lora_behind(engine, adapters, plain):
    with pytest.raises(GenerationCanceled):
        engine.generate(plan(adapters, loras=[{"name": "paper", "scale": 1.5}]),
                        on_step=lambda step, total: True)
    assert np.array_equal(pixels(engine, plan(adapters)), plain)


def test_two_loras_combine(engine, adapters, plain):
    ink = pixels(engine, plan(adapters, loras=[{"name": "ink", "scale": 1.0}]))
    paper = pixels(engine, plan(adapters, loras=[{"name": "paper", "scale": 1.0}]))
    both = pixels(engine, plan(adapters, loras=[{"name": "ink", "scale": 1.0},
                                                {"name": "paper", "scale": 1.0}]))
    assert not np.array_equal(both, ink) and not np.array_equal(both, paper)
    assert not np.array_equal(both, plain)
    # The same pair again gives the same image: scales are set per run, not accumulated.
    again = pixels(engine, plan(adapters, loras=[{"name": "ink", "scale": 1.0},
                                                 {"name": "paper", "scale": 1.0}]))
    assert np.array_equal(both, again)


def test_each_lora_file_is_loaded_once_per_process(engine, adapters, monkeypatch):
    model = engine.models[TINY_RANDOM]
    loads: list[str] = []
    original = model.text_to_image.load_lora_weights

    def counting(*args, **kwargs):
        loads.append(kwargs["adapter_name"])
        return original(*args, **kwargs)

    monkeypatch.setattr(model.text_to_image, "load_lora_weights", counting)
    for _ in range(2):
        engine.generate(plan(adapters, loras=[{"name": "ink", "scale": 0.5},
                                              {"name": "paper", "scale": 0.5}]))
    assert loads.count("ink") <= 1 and loads.count("paper") <= 1
    assert engine.loras.loaded(engine.models[TINY_RANDOM]) == {"ink", "paper"}


def test_lora_on_image_to_image_shares_the_models_modules(engine, adapters):
    init = control_image("square")
    base = plan(adapters, task="image-to-image", init_image="x", strength=0.8)
    with_lora = plan(adapters, task="image-to-image", init_image="x", strength=0.8,
                     loras=[{"name": "ink", "scale": 1.0}])
    assert not np.array_equal(pixels(engine, base, init_image=init),
                              pixels(engine, with_lora, init_image=init))


def test_a_lora_that_does_not_fit_fails_the_run_and_leaves_the_model_as_it_was(
        engine, adapters, plain):
    # The plan refuses it at submit (shapes); a worker still guards itself.
    job = plan(adapters).model_copy(update={"loras": [LoraRequest(name="xl-ink", scale=1.0)]})
    with pytest.raises(ValueError, match="LoRA 'xl-ink' could not be added"):
        engine.generate(job)
    assert "xl-ink" not in engine.loras.loaded(engine.models[TINY_RANDOM])
    listed = engine.models[TINY_RANDOM].text_to_image.get_list_adapters()
    assert not any("xl-ink" in names for names in listed.values())
    assert np.array_equal(pixels(engine, plan(adapters)), plain)
    assert np.array_equal(
        pixels(engine, plan(adapters, loras=[{"name": "ink", "scale": 0.0}])), plain)


def test_png_parameters_name_the_loras_and_controlnets(adapters):
    job = plan(adapters, loras=[{"name": "ink", "scale": 0.8}, {"name": "paper", "scale": -0.5}],
               control=[control(scale=0.7, start=0.1, end=0.9)])
    text = parameters_text(job, 7)
    assert 'LoRA: "ink: 0.8, paper: -0.5"' in text
    assert 'ControlNet 0: "Model: edges, Weight: 0.7, Guidance Start: 0.1, Guidance End: 0.9"' \
        in text


# -- ControlNet ---------------------------------------------------------------------------


def test_controlnet_at_scale_zero_is_no_control_and_at_scale_one_steers(engine, adapters, plain):
    image = [control_image()]
    zero = pixels(engine, plan(adapters, control=[control(scale=0.0)]), control_images=image)
    one = pixels(engine, plan(adapters, control=[control(scale=1.0)]), control_images=image)
    assert np.array_equal(zero, plain)
    assert np.abs(one - plain).max() > 10


def test_control_start_and_end_are_honoured(engine, adapters, plain):
    image = [control_image()]
    whole = pixels(engine, plan(adapters, control=[control()]), control_images=image)
    late = pixels(engine, plan(adapters, control=[control(start=0.5)]), control_images=image)
    early = pixels(engine, plan(adapters, control=[control(end=0.5)]), control_images=image)
    assert len({whole.tobytes(), late.tobytes(), early.tobytes(), plain.tobytes()}) == 4


def test_controlnet_runs_on_the_loaded_base_modules_and_loads_once(engine, adapters):
    model = engine.models[TINY_RANDOM]
    loads_before = engine.controlnets.loads
    for _ in range(2):
        engine.generate(plan(adapters, control=[control("depth")]),
                        control_images=[control_image()])
    assert engine.controlnets.loads - loads_before <= 1
    pipe = engine.controlnets.pipeline_for(model, plan(adapters).task,
                                           plan(adapters, control=[control("depth")]).control)
    assert type(pipe).__name__ == "StableDiffusionControlNetPipeline"
    for component in ("unet", "vae", "text_encoder", "tokenizer"):
        assert getattr(pipe, component) is getattr(model.text_to_image, component)


def test_preload_loads_each_fitting_controlnet_once_on_its_models_device(engine, adapters):
    fresh = GenerationEngine(engine.models, adapters)
    fresh.controlnets.preload(engine.models.values())
    # edges and depth fit tiny-random, xl-edges fits tiny-xl: one load each, none twice.
    assert fresh.controlnets.loads == 3
    fresh.generate(plan(adapters, control=[control()]), control_images=[control_image()])
    assert fresh.controlnets.loads == 3


def test_two_controlnets_run_together(engine, adapters):
    images = [control_image(), control_image("square")]
    edges = pixels(engine, plan(adapters, control=[control()]), control_images=images[:1])
    both = pixels(engine, plan(adapters, control=[control(), control("depth")]),
                  control_images=images)
    assert not np.array_equal(edges, both)


def test_controlnet_with_image_to_image_and_a_lora(engine, adapters):
    init = control_image("square")
    fields = {"task": "image-to-image", "init_image": "x", "strength": 0.8}
    without = pixels(engine, plan(adapters, **fields), init_image=init)
    steered = pixels(engine, plan(adapters, control=[control()],
                                  loras=[{"name": "ink", "scale": 1.0}], **fields),
                     init_image=init, control_images=[control_image()])
    assert not np.array_equal(without, steered)
    pipe = engine.controlnets.pipeline_for(engine.models[TINY_RANDOM], plan(
        adapters, **fields).task, plan(adapters, control=[control()], **fields).control)
    assert type(pipe).__name__ == "StableDiffusionControlNetImg2ImgPipeline"


def test_sdxl_controlnet_on_an_sdxl_model(engine, adapters, xl_spec):
    plain_xl = pixels(engine, plan(adapters, xl_spec))
    steered = pixels(engine, plan(adapters, xl_spec, control=[control("xl-edges")]),
                     control_images=[control_image()])
    assert np.abs(steered - plain_xl).max() > 10
    pipe = engine.controlnets.pipeline_for(engine.models[TINY_XL], plan(adapters, xl_spec).task,
                                           plan(adapters, xl_spec,
                                                control=[control("xl-edges")]).control)
    assert type(pipe).__name__ == "StableDiffusionXLControlNetPipeline"
    assert pipe.unet is engine.models[TINY_XL].text_to_image.unet


def test_sdxl_lora_on_an_sdxl_model(engine, adapters, xl_spec):
    plain_xl = pixels(engine, plan(adapters, xl_spec))
    zero = pixels(engine, plan(adapters, xl_spec, loras=[{"name": "xl-ink", "scale": 0.0}]))
    one = pixels(engine, plan(adapters, xl_spec, loras=[{"name": "xl-ink", "scale": 1.0}]))
    assert np.array_equal(zero, plain_xl)
    assert np.abs(one - plain_xl).max() > 10
    assert np.array_equal(pixels(engine, plan(adapters, xl_spec)), plain_xl)


def test_a_model_evicted_and_loaded_again_gets_its_adapters_again(adapters, xl_spec):
    # A budget below any model: each job's model loads alone, evicting the other.
    settings = Settings(torch_threads=1)
    specs = {TINY_RANDOM: BUILTIN_MODELS[TINY_RANDOM], TINY_XL: xl_spec}
    cache = ModelCache(list(specs), lambda name: load_pipeline(specs[name], settings),
                       budget_bytes=1)
    engine = GenerationEngine(cache, adapters)

    def run(job: JobPlan, **kwargs) -> np.ndarray:
        with cache.use(job.model):  # as worker.tasks holds it
            return pixels(engine, job, **kwargs)

    job = plan(adapters, loras=[{"name": "ink", "scale": 1.0}], control=[control()])
    first = run(job, control_images=[control_image()])
    first_unet = weakref.ref(cache[TINY_RANDOM].text_to_image.unet)
    run(plan(adapters, xl_spec))
    gc.collect()
    assert TINY_RANDOM not in cache
    # Neither the LoRA state nor the ControlNet pipeline kept the evicted modules alive.
    assert first_unet() is None
    again = run(job, control_images=[control_image()])
    assert np.array_equal(first, again)
    assert engine.loras.loaded(cache[TINY_RANDOM]) == {"ink"}


def test_a_batch_of_lora_jobs_runs_with_their_lora_and_leaves_none(engine, adapters, plain):
    from shared.batching import batch_signature
    from tests.worker.test_engine_batch import BATCH_PIXEL_TOLERANCE

    jobs = [plan(adapters, loras=[{"name": "ink", "scale": 1.0}], seed=seed)
            for seed in (7, 8)]
    assert batch_signature(jobs[0]) == batch_signature(jobs[1]) is not None
    alone = pixels(engine, jobs[0])
    batched = engine.generate_batch(jobs, [lambda step, total: False] * 2)
    first = batched[0]
    assert not isinstance(first, Exception)
    together = np.asarray(first[0].image, dtype=np.int16)
    assert np.abs(together - alone).max() <= BATCH_PIXEL_TOLERANCE
    assert np.abs(together - plain).max() > 10
    assert np.array_equal(pixels(engine, plan(adapters)), plain)


def test_engine_refuses_a_control_image_of_the_wrong_size(engine, adapters):
    with pytest.raises(ValueError, match=r"control\.0\.image is 32x32"):
        engine.generate(plan(adapters, control=[control()]),
                        control_images=[control_image().resize((32, 32))])


def test_builtin_unet_config_matches_the_built_model():
    unet = build_tiny_random_pipeline().unet.config
    known = base_unet_config(BUILTIN_MODELS[TINY_RANDOM])
    assert known is not None
    for key, value in known.items():
        assert unet[key] == (tuple(value) if isinstance(value, list) else value), key
