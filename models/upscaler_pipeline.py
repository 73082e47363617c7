"""The emoji upscaler as a diffusers pipeline: any RGB image in, the same image at 2× out.

    pipe = load_emoji_upscaler_pipeline()
    big = pipe(image=small, generator=torch.Generator().manual_seed(0)).images[0]

models/emoji-upscaler/ holds model_index.json (this class and its settings), unet/
(fp16 safetensors) and scheduler/ (DDIM). The pipeline adds `noise_level` of the low-res
scheduler's noise to the input, samples the residual over the bicubic enlargement with
whatever scheduler `pipe.scheduler` is (DDIM, DDPM, Euler and DPM++ all read the same
config), and adds it back; see models/upscaler_architecture.py for why a residual.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor

from models.pipeline import _replace_folder, _save_fp16
from models.upscaler_architecture import (
    MAX_NOISE_LEVEL,
    from_cells,
    make_low_res_scheduler,
    make_sampling_scheduler,
    noisy_low_res,
    to_cells,
    upsample,
)
from models.upscaler_data import SCALE

DEFAULT_UPSCALER_DIR = Path(__file__).resolve().parent / "emoji-upscaler"
# Measured with models.evaluate_upscaler on the held-out emoji (README "The embedded
# upscaler"): 2 DDIM steps score best on SSIM and nearly best on PSNR (1 step is the
# network's mean estimate, slightly softer; 4 or more leave the small network's residual
# noise in flat areas), and each step costs one UNet pass.
DEFAULT_STEPS = 2
DEFAULT_NOISE_LEVEL = 0
# The UNet halves the low-resolution grid twice; 8 leaves room for one more level.
SIZE_MULTIPLE = 8


class EmojiUpscalePipeline(DiffusionPipeline):
    """2× diffusion upscaler; `prompt` is accepted for the common call shape and ignored.

    Args:
        unet: UNet2DModel over space-to-depth cells, conditioned on the noise level
            through its class embedding.
        scheduler: any scheduler built from the training noise schedule's config.
        residual_scale: the factor that gave the training residuals unit variance.
        max_noise_level: highest noise level trained on.
        default_noise_level: what `noise_level=None` means.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents"]
    scale = SCALE

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: KarrasDiffusionSchedulers,
        residual_scale: float = 1.0,
        max_noise_level: int = MAX_NOISE_LEVEL,
        default_noise_level: int = DEFAULT_NOISE_LEVEL,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(
            residual_scale=residual_scale,
            max_noise_level=max_noise_level,
            default_noise_level=default_noise_level,
        )
        # UNet2DModel feeds its float32 sinusoidal projection of the class labels straight
        # into the class embedding's Linear, which fails once the UNet is fp16/bf16; cast
        # that input to the layer's own dtype (UNet2DConditionModel does the same itself).
        # Once per UNet: the trainer wraps the same UNet in a pipeline at every export.
        if not getattr(unet.class_embedding, "_casts_to_weight_dtype", False):
            unet.class_embedding.register_forward_pre_hook(_cast_to_weight_dtype)
            unet.class_embedding._casts_to_weight_dtype = True
        self._low_res_alphas = make_low_res_scheduler().alphas_cumprod
        self._interrupt = False
        self._num_timesteps = 0

    @property
    def default_noise_level(self) -> int:
        return self.config.default_noise_level

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def _check(self, images: list[PIL.Image.Image], noise_level: int, generator) -> None:
        if not images:
            raise ValueError("image: at least one image is needed")
        sizes = {image.size for image in images}
        if len(sizes) > 1:
            raise ValueError(f"image: one batch must share one size, got {sorted(sizes)}")
        width, height = sizes.pop()
        if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
            raise ValueError(
                f"image: width and height must be multiples of {SIZE_MULTIPLE}, "
                f"got {width}×{height}"
            )
        if not 0 <= noise_level <= self.config.max_noise_level:
            raise ValueError(
                f"noise_level: must be in [0, {self.config.max_noise_level}], got {noise_level}"
            )
        if isinstance(generator, list) and len(generator) != len(images):
            raise ValueError(
                f"generator: {len(generator)} generators for {len(images)} images; "
                "pass one per image"
            )

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | list[PIL.Image.Image],
        prompt: str | list[str] | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        noise_level: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Upscale each image 2×; image i depends only on generator i.

        Args:
            image: RGB image(s), all one size, width and height multiples of 8.
            prompt: ignored (the upscaler is not text-conditioned).
            num_inference_steps: scheduler steps.
            noise_level: conditioning noise in [0, max_noise_level]; higher trusts the
                input's fine detail less. None: `default_noise_level`.
            generator: one per image for per-image reproducibility.
            output_type: "pil", "np" (float in [0, 1]) or "pt".
            callback_on_step_end: called as (pipe, step, timestep, tensors) after each
                step; set `pipe._interrupt` to stop early.
            callback_on_step_end_tensor_inputs: which tensors to pass it ("latents").
        """
        images = [image] if isinstance(image, PIL.Image.Image) else list(image)
        noise_level = self.default_noise_level if noise_level is None else int(noise_level)
        self._check(images, noise_level, generator)
        tensor_inputs = callback_on_step_end_tensor_inputs or []
        unknown = set(tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs: unknown {sorted(unknown)}")
        self._interrupt = False
        device, dtype = self._execution_device, self.unet.dtype
        batch = len(images)

        low = _to_tensor(images).to(device=device, dtype=torch.float32)
        # Every random draw comes from the image's own generator, in float32, so the
        # result depends neither on the batch nor (beyond rounding) on the dtype.
        low_noise = randn_tensor(low.shape, generator=generator, device=device)
        levels = torch.full((batch,), noise_level, device=device, dtype=torch.long)
        condition = to_cells(upsample(noisy_low_res(low, low_noise, levels, self._low_res_alphas)))
        base = upsample(low)
        condition = condition.to(dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        latents = randn_tensor(condition.shape, generator=generator, device=device)
        latents = (latents * self.scheduler.init_noise_sigma).to(dtype)
        class_labels = levels.to(dtype)

        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    break
                model_input = self.scheduler.scale_model_input(latents, t)
                prediction = self.unet(
                    torch.cat([model_input, condition], dim=1),
                    t,
                    class_labels=class_labels,
                ).sample
                latents = self.scheduler.step(
                    prediction, t, latents, generator=generator
                ).prev_sample
                if callback_on_step_end is not None:
                    tensors = {"latents": latents} if "latents" in tensor_inputs else {}
                    returned = callback_on_step_end(self, i, t, tensors) or {}
                    latents = returned.get("latents", latents)
                progress.update()

        residual = from_cells(latents.float()) / self.config.residual_scale
        pictures = ((base + residual).clamp(-1, 1) + 1) / 2
        self.maybe_free_model_hooks()
        output = _from_tensor(pictures, output_type)
        return ImagePipelineOutput(images=output) if return_dict else (output,)


def _cast_to_weight_dtype(module: torch.nn.Module, args: tuple) -> tuple:
    weight_dtype = next(module.parameters()).dtype
    return tuple(a.to(weight_dtype) if torch.is_tensor(a) else a for a in args)


def _to_tensor(images: list[PIL.Image.Image]) -> torch.Tensor:
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1


def _from_tensor(pictures: torch.Tensor, output_type: str):
    if output_type == "pt":
        return pictures
    arrays = pictures.permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return arrays
    if output_type != "pil":
        raise ValueError(f"output_type: one of 'pil', 'np', 'pt', got {output_type!r}")
    return [PIL.Image.fromarray(a) for a in (arrays * 255).round().astype(np.uint8)]


def load_emoji_upscaler_pipeline(
    dtype: torch.dtype = torch.float32, path: str | Path | None = None
) -> EmojiUpscalePipeline:
    """Load the exported upscaler (default: the committed models/emoji-upscaler/)."""
    path = Path(path) if path is not None else DEFAULT_UPSCALER_DIR
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"no emoji upscaler at {path} (model_index.json missing)")
    return EmojiUpscalePipeline.from_pretrained(path, dtype=dtype, local_files_only=True)


def save_emoji_upscaler_pipeline(
    out_dir: Path,
    unet: UNet2DModel,
    residual_scale: float,
    default_noise_level: int = DEFAULT_NOISE_LEVEL,
) -> None:
    """Write the pipeline folder (fp16 UNet safetensors, DDIM, index) in one swap."""

    def write(folder: Path) -> None:
        pipe = EmojiUpscalePipeline(
            unet=unet,
            scheduler=make_sampling_scheduler(),
            residual_scale=residual_scale,
            default_noise_level=default_noise_level,
        )
        folder.mkdir(parents=True)
        _save_fp16(unet, folder / "unet")
        pipe.scheduler.save_pretrained(folder / "scheduler")
        pipe.save_config(folder)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _replace_folder(out_dir, write)
