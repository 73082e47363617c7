"""The GPU fast path's choices, and its changes to a real (tiny) pipeline, on the CPU:
what each device gets, that the tuned pipeline still makes the same images, and the
warm-up that runs before a worker reports ready. On-GPU checks: test_fast_path_cuda.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from shared.model_registry import BUILTIN_MODELS, TINY_RANDOM, ModelRegistry
from shared.settings import Settings
from tests.factories import make_plan
from tests.worker.test_engine_batch import BATCH_PIXEL_TOLERANCE
from worker import fast_path, generation_worker
from worker.engine import GenerationEngine
from worker.fast_path import FastPath, configure_backends, fast_path_for, place, warm_up
from worker.pipelines import LoadedModel, build_tiny_random_pipeline, load_pipeline

EVERYTHING = FastPath(sdpa_attention=True, channels_last=True, vae_slicing=True,
                      vae_tiling=True)


def test_the_cpu_gets_the_pipeline_as_loaded() -> None:
    assert fast_path_for(Settings(device="cpu")) == FastPath()


def test_an_nvidia_gpu_gets_every_default() -> None:
    chosen = fast_path_for(Settings(device="cuda:1"))
    assert chosen.sdpa_attention and chosen.channels_last and chosen.tf32
    assert chosen.vae_slicing and chosen.vae_tiling and chosen.warm_up
    assert not chosen.compile and not chosen.cpu_offload


def test_the_gpu_options_are_settings() -> None:
    chosen = fast_path_for(Settings(device="cuda", torch_compile=True, cpu_offload=True))
    assert chosen.compile and chosen.cpu_offload and chosen.warm_up
    assert fast_path_for(Settings(device="cuda", fast_path=False)) == FastPath()
    assert fast_path_for(Settings(device="cpu", torch_compile=True)) == FastPath(
        compile=True, warm_up=True)


def test_tuning_sets_sdpa_channels_last_and_vae_slicing_and_tiling() -> None:
    pipe = build_tiny_random_pipeline()
    pipe.unet.set_attn_processor(AttnProcessor())  # a pipeline that came without SDPA
    place(pipe, torch.device("cpu"), EVERYTHING)
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}
    for module in (pipe.unet, pipe.vae):
        weight = next(p for p in module.parameters() if p.dim() == 4)
        assert weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.use_slicing and pipe.vae.use_tiling


def test_a_tuned_pipeline_makes_the_same_images(engine: GenerationEngine, tiny_model) -> None:
    pipe = build_tiny_random_pipeline()
    place(pipe, torch.device("cpu"), EVERYTHING)
    tuned = GenerationEngine({TINY_RANDOM: LoadedModel(
        spec=tiny_model.spec, text_to_image=pipe, image_to_image=None, inpaint=None,
        scheduler_config=dict(pipe.scheduler.config), device=torch.device("cpu"),
        dtype=torch.float32)})
    plan = make_plan(num_images=2, seed=3)
    for plain, fast in zip(engine.generate(plan), tuned.generate(plan), strict=True):
        difference = np.abs(np.asarray(plain.image, np.int16) - np.asarray(fast.image, np.int16))
        assert difference.max() <= BATCH_PIXEL_TOLERANCE


def test_tf32_is_switched_on_only_when_chosen() -> None:
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        configure_backends(FastPath())
        assert not torch.backends.cuda.matmul.allow_tf32
        configure_backends(FastPath(tf32=True))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def test_warm_up_runs_every_model_alone_and_as_a_full_batch(engine: GenerationEngine) -> None:
    seen: list[int] = []

    class Counting(GenerationEngine):
        def generate(self, plan, *args, **kwargs):
            seen.append(plan.num_images)
            return super().generate(plan, *args, **kwargs)

        def generate_batch(self, plans, on_steps):
            seen.append(sum(plan.num_images for plan in plans))
            return super().generate_batch(plans, on_steps)

    seconds = warm_up(Counting(engine.models), max_batch=3)
    assert set(seconds) == {TINY_RANDOM} and seconds[TINY_RANDOM] > 0
    assert seen == [1, 3]


def test_the_worker_is_built_warm_or_not_at_all(monkeypatch: pytest.MonkeyPatch,
                                                redis_url: str, tmp_path) -> None:
    """build_runtime returns (and the heartbeat then starts) only after the warm-up; a
    warm-up that fails leaves the worker without an engine, like a failed load."""
    settings = Settings(redis_url=redis_url, data_dir=tmp_path, torch_threads=1,
                        default_model=TINY_RANDOM, max_batch=2)
    monkeypatch.setattr(generation_worker, "settings", settings)
    monkeypatch.setattr(generation_worker, "registry", ModelRegistry.from_settings(settings))
    monkeypatch.setattr(generation_worker, "fast_path_for",
                        lambda _: FastPath(warm_up=True))
    warmed: list[dict[str, float]] = []
    real_warm_up = fast_path.warm_up
    monkeypatch.setattr(generation_worker, "warm_up",
                        lambda engine, n: warmed.append(real_warm_up(engine, n)))
    runtime = generation_worker.build_runtime()
    assert runtime.engine is not None and [set(w) for w in warmed] == [{TINY_RANDOM}]

    def failing(engine: GenerationEngine, n: int) -> None:
        raise RuntimeError("compiler crashed")

    monkeypatch.setattr(generation_worker, "warm_up", failing)
    broken = generation_worker.build_runtime()
    assert broken.engine is None and broken.load_error is not None
    assert "compiler crashed" in broken.load_error


def test_loading_applies_the_settings_fast_path() -> None:
    model = load_pipeline(BUILTIN_MODELS[TINY_RANDOM], Settings(device="cpu"))
    assert model.dtype == torch.float32 and not model.text_to_image.vae.use_tiling
