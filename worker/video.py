"""Text-to-video: loading a video pipeline, running a plan one video at a time, and
writing the frames as MP4 (PyAV, H.264), animated WebP or GIF (Pillow), with a PNG poster.

The engine (``worker.engine``) dispatches video tasks here; progress and cancellation go
through the same ``callback_on_step_end`` as images, and every video has its own seed.
"""

from __future__ import annotations

import inspect
import io
import logging
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    DiffusionPipeline,
    MotionAdapter,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from transformers import T5Config, T5EncoderModel

from shared.model_registry import ModelSpec
from shared.records import OutputImage
from shared.schemas import VIDEO_TASKS, JobPlan, OutputFormat
from shared.settings import Settings
from shared.storage import POSTER_CONTENT_TYPE, Storage, image_key, poster_key
from worker.engine import GeneratedImage, GenerationCanceled, OnStep, _StepCallback
from worker.images import encode_image, parameters_text
from worker.pipelines import (
    LoadedModel,
    ModelLoadError,
    build_byte_level_clip_tokenizer,
    build_tiny_random_pipeline,
    configure_torch,
    torch_dtype_for,
)
from worker.schedulers import make_scheduler

logger = logging.getLogger(__name__)

TINY_MOTION_SEED = 0
TINY_COGVIDEOX_SEED = 0
# The tiny CogVideoX's text length (the real ones take 226 tokens).
TINY_TEXT_TOKENS = 16
# CogVideoX's own samplers, which the generic DDIM/DPM classes are not (they carry its
# SNR shift): the names requests use, mapped to them.
_COGVIDEOX_SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": CogVideoXDDIMScheduler,
    "dpmpp_2m": CogVideoXDPMScheduler,
}
# H.264 quality (x264's constant rate factor): 18 is visually lossless for most clips.
MP4_CRF = 18
WEBP_QUALITY = 90
# EXIF ImageDescription: where an animated WebP carries the generation parameters.
EXIF_IMAGE_DESCRIPTION = 0x010E


# --- loading ----------------------------------------------------------------------------


def load_video_model(spec: ModelSpec, settings: Settings) -> LoadedModel:
    """Load a text-to-video pipeline (AnimateDiff: SD 1.5 + MotionAdapter in one folder)."""
    other = [task.value for task in spec.tasks if task not in VIDEO_TASKS]
    if other:
        raise ModelLoadError(f"model '{spec.name}' is a video model; it cannot serve "
                             f"{', '.join(other)} (set \"tasks\": [\"text-to-video\"])")
    configure_torch(settings)
    device = torch.device(settings.device)
    dtype = torch_dtype_for(settings.device, spec)
    pipe = _load(spec, dtype)
    if "num_frames" not in _call_parameters(pipe):
        raise ModelLoadError(f"model '{spec.name}' loads as {type(pipe).__name__}, which "
                             "makes no video; text-to-video needs a video pipeline "
                             "(e.g. AnimateDiffPipeline)")
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    logger.info("loaded video model %s (%s) as %s on %s/%s", spec.name, spec.source,
                type(pipe).__name__, device, str(dtype).removeprefix("torch."))
    return LoadedModel(
        spec=spec,
        text_to_image=None,
        image_to_image=None,
        inpaint=None,
        scheduler_config=dict(pipe.scheduler.config),
        device=device,
        dtype=dtype,
        text_to_video=pipe,
    )


def _load(spec: ModelSpec, dtype: torch.dtype) -> DiffusionPipeline:
    path = Path(spec.source).expanduser()
    local = path.is_dir()
    if not local and (path.is_absolute() or spec.source.startswith((".", "~"))):
        raise ModelLoadError(f"model '{spec.name}': directory {spec.source!r} does not exist")
    try:
        # model_index.json names the pipeline class (AnimateDiffPipeline, CogVideoXPipeline...).
        return DiffusionPipeline.from_pretrained(
            path if local else spec.source, dtype=dtype, local_files_only=local)
    except (OSError, ValueError) as exc:
        where = "local folder" if local else "hub id (needs network or a populated HF cache)"
        raise ModelLoadError(
            f"model '{spec.name}': {spec.source!r} ({where}) is not a loadable diffusers "
            f"pipeline: {exc}") from exc


def _call_parameters(pipe: DiffusionPipeline) -> set[str]:
    return set(inspect.signature(pipe.__call__).parameters)


def build_tiny_animatediff_pipeline() -> AnimateDiffPipeline:
    """AnimateDiff with tiny random weights, identical on every call: the built-in
    tiny-random SD pipeline plus a tiny MotionAdapter (diffusers' own test shapes).

    ``save_pretrained`` it to a folder and register the folder in ``LATENTD_MODELS`` to
    serve it, as a real AnimateDiff pipeline folder is served.
    """
    base = build_tiny_random_pipeline()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_MOTION_SEED)
        adapter = MotionAdapter(
            block_out_channels=(32, 64),
            motion_layers_per_block=1,  # the UNet's layers_per_block
            motion_norm_num_groups=2,
            motion_num_attention_heads=4,
        )
    return AnimateDiffPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
        unet=base.unet, motion_adapter=adapter.eval(), scheduler=base.scheduler,
    )


def build_tiny_cogvideox_pipeline() -> CogVideoXPipeline:
    """CogVideoX with tiny random weights, identical on every call (diffusers' own test
    shapes; the byte-level CLIP tokenizer stands in for T5's, which needs a vocabulary
    file). Makes 8k+1 frames, at sizes that are multiples of 16."""
    tokenizer = build_byte_level_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_COGVIDEOX_SEED)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4,
            time_embed_dim=2, text_embed_dim=32, num_layers=1, sample_width=8,
            sample_height=8, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
            max_text_seq_length=TINY_TEXT_TOKENS,
        )
        vae = AutoencoderKLCogVideoX(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
            latent_channels=4, layers_per_block=1, norm_num_groups=2,
            temporal_compression_ratio=4,
        )
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        ))
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(),
                             vae=vae.eval(), transformer=transformer.eval(),
                             scheduler=CogVideoXDDIMScheduler())


# --- running ----------------------------------------------------------------------------


def generate_videos(
    pipe: DiffusionPipeline,
    plan: JobPlan,
    scheduler_config: Mapping[str, Any],
    device: torch.device,
    on_step: OnStep,
) -> list[GeneratedImage]:
    """Run ``plan``'s videos one after another; raises ``GenerationCanceled`` when
    ``on_step`` asks to stop.

    One at a time, so a job's memory is one video's (what LATENTD_MAX_VIDEO_PIXELS caps)
    however many it asks for; progress counts the steps of all of them.
    """
    assert plan.num_frames is not None  # the engine's check_inputs guarantees it
    model_kwargs = _model_kwargs(pipe)
    results = []
    for index, seed in enumerate(plan.seeds):
        callback = _StepCallback(_job_steps(on_step, index, len(plan.seeds)),
                                 fallback_total=plan.steps)
        kwargs: dict[str, Any] = {
            "prompt": plan.prompt,
            "num_frames": plan.num_frames,
            "width": plan.width,
            "height": plan.height,
            "num_inference_steps": plan.steps,
            "guidance_scale": plan.guidance_scale,
            # Video i depends on seeds[i] alone, as image i does.
            "generator": torch.Generator(device).manual_seed(seed),
            "callback_on_step_end": callback,
            "output_type": "pil",
            **model_kwargs,
        }
        if plan.negative_prompt is not None:
            kwargs["negative_prompt"] = plan.negative_prompt
        # A fresh scheduler per video: nothing of the previous run's state carries over.
        pipe.scheduler = video_scheduler(plan.scheduler, scheduler_config)
        output = pipe(**kwargs)
        if callback.canceled_at is not None:
            step, total = callback.canceled_at
            raise GenerationCanceled(index * total + step, len(plan.seeds) * total)
        frames = list(output.frames[0])
        results.append(GeneratedImage(image=frames[0], seed=seed, frames=frames))
    return results


def video_scheduler(name: str, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """A new scheduler ``name`` for a video model: CogVideoX's own classes for its
    configs, else the image models' (``worker.schedulers``)."""
    if str(base_config.get("_class_name", "")).startswith("CogVideoX"):
        if name not in _COGVIDEOX_SCHEDULERS:
            raise ValueError(f"scheduler '{name}' cannot drive a CogVideoX model (runs: "
                             f"{', '.join(_COGVIDEOX_SCHEDULERS)})")
        return _COGVIDEOX_SCHEDULERS[name].from_config(base_config)
    return make_scheduler(name, base_config)


def _model_kwargs(pipe: DiffusionPipeline) -> dict[str, Any]:
    """Arguments a pipeline's own weights fix: CogVideoX's transformer takes text of one
    length (226 tokens for the released models)."""
    transformer = getattr(pipe, "transformer", None)
    length = getattr(getattr(transformer, "config", None), "max_text_seq_length", None)
    if length is not None and "max_sequence_length" in _call_parameters(pipe):
        return {"max_sequence_length": length}
    return {}


def _job_steps(on_step: OnStep, index: int, count: int) -> OnStep:
    """``on_step`` of video ``index`` of ``count``: steps counted across the whole job."""
    def report(step: int, total_steps: int) -> bool:
        return on_step(index * total_steps + step, count * total_steps)
    return report


# --- outputs ----------------------------------------------------------------------------


def video_parameters_text(plan: JobPlan, seed: int) -> str:
    """The image ``parameters`` text plus the frame count and rate."""
    return f"{parameters_text(plan, seed)}, Frames: {plan.num_frames}, FPS: {plan.fps}"


def store_video(storage: Storage, job_id: str, index: int, plan: JobPlan,
                result: GeneratedImage) -> OutputImage:
    """Write video ``index`` in the plan's format and its poster frame; its record."""
    assert result.frames is not None and plan.fps is not None
    fmt = plan.output_format
    parameters = video_parameters_text(plan, result.seed)
    storage.put(image_key(job_id, index, fmt.value),
                encode_video(result.frames, fmt, plan.fps, parameters), fmt.content_type)
    storage.put(poster_key(job_id, index),
                encode_image(result.image, OutputFormat.PNG, parameters), POSTER_CONTENT_TYPE)
    return OutputImage(index=index, seed=result.seed, width=result.image.width,
                       height=result.image.height, format=fmt, frames=len(result.frames),
                       fps=plan.fps)


def encode_video(frames: list[Image.Image], fmt: OutputFormat, fps: int,
                 parameters: str) -> bytes:
    """``frames`` as an ``fmt`` file playing at ``fps``, carrying ``parameters``; the same
    frames give the same bytes.

    MP4: H.264 (yuv420p, what every player decodes), ``parameters`` as the ``comment``
    tag. Animated WebP: frame times in milliseconds, ``parameters`` as EXIF
    ImageDescription. GIF: frame times in hundredths of a second (so 8 fps is stored
    as 120 ms a frame), ``parameters`` as the comment extension; 256 colours a frame.
    """
    if fmt is OutputFormat.MP4:
        return _mp4(frames, fps, parameters)
    buffer = io.BytesIO()
    first, rest = frames[0].convert("RGB"), [frame.convert("RGB") for frame in frames[1:]]
    duration = round(1000 / fps)
    if fmt is OutputFormat.WEBP:
        exif = Image.Exif()
        exif[EXIF_IMAGE_DESCRIPTION] = parameters
        first.save(buffer, format="WEBP", save_all=True, append_images=rest, duration=duration,
                   loop=0, quality=WEBP_QUALITY, exif=exif)
    elif fmt is OutputFormat.GIF:
        first.save(buffer, format="GIF", save_all=True, append_images=rest, duration=duration,
                   loop=0, comment=parameters)
    else:
        raise ValueError(f"output_format '{fmt.value}' is not a video format")
    return buffer.getvalue()


def _mp4(frames: list[Image.Image], fps: int, parameters: str) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        container.metadata["comment"] = parameters
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        # One encoder thread: x264 splits work between threads by timing, and the same
        # frames then came out as different (equally good) files from run to run.
        stream.options = {"crf": str(MP4_CRF), "threads": "1"}
        for frame in frames:
            yuv = av.VideoFrame.from_ndarray(_yuv420(frame), format="yuv420p")
            container.mux(stream.encode(yuv))
        container.mux(stream.encode())  # flush the encoder's delayed frames
    return buffer.getvalue()


# BT.601 RGB → Y'CbCr in the limited ("TV") range: what players assume of untagged
# standard-definition H.264, and what FFmpeg's own conversion would produce.
_BT601 = np.array([[0.256788, 0.504129, 0.097906],
                   [-0.148223, -0.290993, 0.439216],
                   [0.439216, -0.367788, -0.071427]])
_BT601_OFFSET = np.array([16.0, 128.0, 128.0])


def _yuv420(frame: Image.Image) -> np.ndarray:
    """The frame as yuv420p planes (Y, then U and V at half size), stacked as PyAV takes them.

    Converted here rather than by FFmpeg's swscale, whose SIMD and C paths round
    differently depending on how the input buffer happens to be aligned: the same frames
    then gave different files from one run to the next.
    """
    rgb = np.asarray(frame.convert("RGB"), dtype=np.float64)
    height, width = rgb.shape[:2]
    ycc = rgb @ _BT601.T + _BT601_OFFSET
    # Chroma is the mean of each 2×2 block.
    chroma = ycc[..., 1:].reshape(height // 2, 2, width // 2, 2, 2).mean(axis=(1, 3))
    y, u, v = (np.clip(np.rint(plane), 0, 255).astype(np.uint8)
               for plane in (ycc[..., 0], chroma[..., 0], chroma[..., 1]))
    # PyAV's yuv420p layout: the Y rows, then U and V each folded into height/4 rows.
    return np.concatenate([y, u.reshape(-1, width), v.reshape(-1, width)])
