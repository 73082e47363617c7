"""A request plus its model's spec → the job's complete plan. Pure: no I/O, no torch.

Everything a job *means* is decided here, once: defaults, sizes (outpaint and upscale
included, with the upscale tiling), a video's frames and fps, the output format, every seed,
and the strength, scheduler and negative prompt that will actually be used.
Each rule that joins fields or depends on the model is checked here and refused with
``PlanError`` naming the field. Where the service must change a request to run it, the
change is made here and reported as a ``PlanWarning``; the worker then runs the plan as
it stands and never decides again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.adapters import Adapters, names
from shared.model_registry import (
    REFINER_AESTHETIC_SCORE,
    REFINER_NEGATIVE_AESTHETIC_SCORE,
    GuidanceKind,
    ModelFamily,
    ModelSpec,
)
from shared.schemas import (
    DEFAULT_VIDEO_FORMAT,
    IMAGE_FORMATS,
    MAX_SEED,
    VIDEO_FORMATS,
    VIDEO_TASKS,
    ControlSettings,
    GenerationRequest,
    JobPlan,
    LoraRequest,
    OutputFormat,
    PlanWarning,
    RefinerPlan,
    Task,
    UpscaleTiling,
)

# Image-to-image and inpaint keep a quarter of the init image's structure by default.
DEFAULT_STRENGTH = 0.75
# Outpainting starts the new area from stretched edge pixels, which must not survive:
# the masked area is always fully re-noised.
OUTPAINT_STRENGTH = 1.0
# Classifier-free guidance runs only above this scale (diffusers' pipelines skip the
# unconditional pass at or below it), so a negative prompt is then unused.
CFG_THRESHOLD = 1.0
SIZE_MULTIPLE = 8
# Tasks that start from pure noise and a prompt alone (no input image).
_TEXT_TASKS = (Task.TEXT_TO_IMAGE, Task.TEXT_TO_VIDEO)
# The largest upscale input (pixels): with tiling the memory stays bounded, but the time
# grows with the area, and one job should not hold a worker for hours.
MAX_UPSCALE_INPUT_PIXELS = 1024 * 1024

# A field the model can *never* use is refused (422): the request was written for another
# kind of model, and its author should know before paying for an image. A negative prompt
# that only this request's scale turns off (CFG at guidance_scale <= 1, Flux without
# true_cfg_scale > 1) is dropped with a warning instead: the same body is valid at every
# scale, so a sweep over the scale runs through, and the plan says what ran.


class PlanError(ValueError):
    """A request that cannot run as asked; ``field`` is the request field to fix."""

    def __init__(self, field: str, code: str, message: str):
        super().__init__(message)
        self.field = field
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PlannedJob:
    """The plan, what was changed to reach it, and the size each input image must be."""

    plan: JobPlan
    warnings: list[PlanWarning] = field(default_factory=list)
    # init/mask images are resized to this once, before storing (outpaint: the inner image).
    input_size: tuple[int, int] | None = None


def plan_job(
    request: GenerationRequest,
    spec: ModelSpec,
    *,
    init_size: tuple[int, int] | None,
    random_seed: int,
    refiner_spec: ModelSpec | None = None,
    max_video_pixels: int | None = None,
    adapters: Adapters | None = None,
) -> PlannedJob:
    """Resolve ``request`` for ``spec``.

    Args:
        request: the validated request body (each field within its own bounds).
        spec: the model the request runs on.
        init_size: (width, height) of the decoded init image, None when there is none.
        random_seed: the first seed when the request leaves ``seed`` null.
        refiner_spec: the model ``request.refiner`` names (None when it names none).
        max_video_pixels: frames × width × height of one video at most
            (LATENTD_MAX_VIDEO_PIXELS); None: no cap.
        adapters: the LoRAs and ControlNets requests may name (None: none are offered).
    """
    warnings: list[PlanWarning] = []
    _check_task(request, spec)
    _check_inputs(request, init_size)
    if request.task is Task.UPSCALE:
        _check_upscale_fields(request)
    elif request.prompt is None:
        raise PlanError("prompt", "missing_input",
                        f"prompt is required for task '{request.task.value}'")
    scale = _scale(request, spec)
    width, height, input_size = _sizes(request, spec, init_size, scale)
    num_frames, fps = _video(request, spec, width, height, max_video_pixels)
    steps = request.steps or spec.default_steps
    guidance_scale = _guidance_scale(request, spec)
    negative_prompt, true_cfg_scale = _negative_prompt(
        request, spec, guidance_scale, warnings)
    plan = JobPlan(
        task=request.task,
        model=spec.name,
        prompt=request.prompt or "",
        negative_prompt=negative_prompt,
        width=width,
        height=height,
        num_images=request.num_images,
        steps=steps,
        guidance_scale=guidance_scale,
        scheduler=_scheduler(request, spec),
        seeds=_seeds(request.seed if request.seed is not None else random_seed,
                     request.num_images),
        strength=_strength(request, steps, warnings),
        outpaint=request.outpaint,
        num_frames=num_frames,
        fps=fps,
        output_format=_output_format(request),
        priority=request.priority,
        webhook=request.webhook,
        guidance=spec.guidance,
        true_cfg_scale=true_cfg_scale,
        aesthetic_score=spec.aesthetic_score,
        negative_aesthetic_score=spec.negative_aesthetic_score,
        refiner=_refiner(request, spec, refiner_spec, steps),
        loras=_loras(request, spec, adapters or Adapters()),
        control=_controls(request, spec, adapters or Adapters()),
        scale=scale,
        noise_level=_noise_level(request, spec),
        tile=_tiling(spec, input_size) if scale is not None else None,
    )
    return PlannedJob(plan=plan, warnings=warnings, input_size=input_size)


def _guidance_scale(request: GenerationRequest, spec: ModelSpec) -> float:
    asked = request.guidance_scale
    if asked is None:
        return spec.default_guidance_scale
    if spec.guidance is GuidanceKind.NONE and asked != spec.default_guidance_scale:
        raise PlanError(
            "guidance_scale", "unsupported_guidance",
            f"model '{spec.name}' takes no guidance; leave guidance_scale out"
            + (" (true_cfg_scale runs classifier-free guidance on it)" if spec.true_cfg else ""),
        )
    low, high = spec.min_guidance_scale, spec.max_guidance_scale
    assert low is not None and high is not None  # the spec fills them from its kind
    if not low <= asked <= high:
        raise PlanError(
            "guidance_scale", "guidance_out_of_range",
            f"guidance_scale {asked:g} is outside model '{spec.name}' range {low:g}–{high:g} "
            f"({spec.guidance.value} guidance)",
        )
    return asked


def _refiner(
    request: GenerationRequest, spec: ModelSpec, refiner_spec: ModelSpec | None, steps: int
) -> RefinerPlan | None:
    asked = request.refiner
    if asked is None:
        return None
    if request.task is not Task.TEXT_TO_IMAGE:
        raise PlanError("refiner", "unexpected_input",
                        f"a refiner runs after text-to-image, not '{request.task.value}'")
    if spec.family is not ModelFamily.SDXL:
        raise PlanError("refiner", "unsupported_refiner",
                        f"model '{spec.name}' ({spec.family.value}) hands over to no refiner; "
                        "only SDXL base models do")
    if refiner_spec is None or refiner_spec.family is not ModelFamily.SDXL_REFINER:
        kind = "unknown" if refiner_spec is None else f"a {refiner_spec.family.value} model"
        raise PlanError("refiner.model", "not_a_refiner",
                        f"refiner model '{asked.model}' is {kind}, not an SDXL refiner")
    scheduler = request.scheduler or spec.default_scheduler
    if scheduler not in refiner_spec.schedulers:
        raise PlanError("scheduler", "unsupported_scheduler",
                        f"refiner '{refiner_spec.name}' does not run scheduler '{scheduler}'")
    # diffusers splits the schedule at switch_at: each stage needs a step of its own.
    base_steps = int(steps * asked.switch_at)
    if base_steps < 1 or base_steps >= steps:
        raise PlanError("refiner.switch_at", "no_denoising_steps",
                        f"switch_at {asked.switch_at} leaves a stage without steps out of "
                        f"{steps}; change switch_at or raise steps")
    return RefinerPlan(
        model=refiner_spec.name, switch_at=asked.switch_at,
        aesthetic_score=_or(refiner_spec.aesthetic_score, REFINER_AESTHETIC_SCORE),
        negative_aesthetic_score=_or(refiner_spec.negative_aesthetic_score,
                                     REFINER_NEGATIVE_AESTHETIC_SCORE),
    )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _check_task(request: GenerationRequest, spec: ModelSpec) -> None:
    if request.task not in spec.tasks:
        tasks = ", ".join(t.value for t in spec.tasks)
        raise PlanError(
            "task", "unsupported_task",
            f"model '{spec.name}' does not support task '{request.task.value}' (supports: {tasks})",
        )


def _check_inputs(request: GenerationRequest, init_size: tuple[int, int] | None) -> None:
    task = request.task
    if task in _TEXT_TASKS:
        for name in ("init_image", "mask_image"):
            if getattr(request, name) is not None:
                raise PlanError(name, "unexpected_input",
                                f"{name} is only used by image tasks, not '{task.value}'")
    elif request.init_image is None or init_size is None:
        raise PlanError("init_image", "missing_input",
                        f"init_image is required for task '{task.value}'")
    if task is Task.INPAINT and request.mask_image is None:
        raise PlanError("mask_image", "missing_input", "mask_image is required for task 'inpaint'")
    if task in (Task.IMAGE_TO_IMAGE, Task.OUTPAINT, Task.UPSCALE) and (
            request.mask_image is not None):
        # Image-to-image and upscale have no mask, outpaint makes its own: refuse rather
        # than ignore.
        raise PlanError("mask_image", "unexpected_input",
                        f"mask_image is only used by task 'inpaint', not '{task.value}'")
    margins = request.outpaint
    if task is Task.OUTPAINT:
        if margins is None or not (margins.left or margins.right or margins.top or margins.bottom):
            raise PlanError("outpaint", "missing_input", "outpaint needs at least one non-zero margin")
    elif margins is not None:
        raise PlanError("outpaint", "unexpected_input",
                        "outpaint margins are only used by task 'outpaint'")


def _check_upscale_fields(request: GenerationRequest) -> None:
    """Fields upscale has no use for are refused, not ignored: the output size is the
    input's times the scale, and the whole image is re-made (no strength, no mask)."""
    for name, reason in (
        ("width", "the output is init_image's size times scale"),
        ("height", "the output is init_image's size times scale"),
        ("strength", "upscale re-draws the whole image at the new size"),
    ):
        if getattr(request, name) is not None:
            raise PlanError(name, "unexpected_input", f"{name} is not used by upscale: {reason}")


def _scale(request: GenerationRequest, spec: ModelSpec) -> int | None:
    """The upscale factor (the model's first when not asked); None for other tasks."""
    if request.task is not Task.UPSCALE:
        for name in ("scale", "noise_level"):
            if getattr(request, name) is not None:
                raise PlanError(name, "unexpected_input",
                                f"{name} is only used by task 'upscale'")
        return None
    scale = request.scale if request.scale is not None else spec.scales[0]
    if scale not in spec.scales:
        served = ", ".join(str(s) for s in spec.scales)
        raise PlanError("scale", "unsupported_scale",
                        f"model '{spec.name}' does not upscale by {scale} (scales: {served})")
    return scale


def _noise_level(request: GenerationRequest, spec: ModelSpec) -> int | None:
    if request.task is not Task.UPSCALE:
        return None
    asked = request.noise_level
    if spec.max_noise_level is None:
        if asked is not None:
            raise PlanError("noise_level", "unexpected_input",
                            f"model '{spec.name}' takes no noise_level")
        return None
    if asked is None:
        return spec.default_noise_level
    if asked > spec.max_noise_level:
        raise PlanError("noise_level", "noise_level_too_high",
                        f"noise_level {asked} is over model '{spec.name}' maximum of "
                        f"{spec.max_noise_level}")
    return asked


def _tiling(spec: ModelSpec, input_size: tuple[int, int] | None) -> UpscaleTiling | None:
    """Tiles when the input is larger than the model's tile, else None (one piece)."""
    assert input_size is not None
    if spec.tile_size is None or max(input_size) <= spec.tile_size:
        return None
    return UpscaleTiling(size=spec.tile_size, overlap=spec.tile_overlap or 0)


def _sizes(
    request: GenerationRequest, spec: ModelSpec, init_size: tuple[int, int] | None,
    scale: int | None = None,
) -> tuple[int, int, tuple[int, int] | None]:
    """(output width, output height, input image size) for the task."""
    for name in ("width", "height"):
        value = getattr(request, name)
        if value is not None and value % spec.size_multiple:
            raise PlanError(name, "size_not_multiple",
                            f"{name} {value} is not a multiple of {spec.size_multiple}, which "
                            f"model '{spec.name}' ({spec.family.value}) needs")
    if request.task in _TEXT_TASKS:
        width = request.width or spec.default_width
        height = request.height or spec.default_height
        _check_fits(spec, width, height, "width", "height")
        return width, height, None
    assert init_size is not None  # _check_inputs guarantees it
    if request.task is Task.UPSCALE:
        assert scale is not None
        return _upscale_sizes(spec, init_size, scale)
    inner = image_task_size(init_size, request.width, request.height, spec.size_multiple)
    given = request.width is not None or request.height is not None
    # A size derived from the image is the image's fault, not the size fields'.
    fields = ("width", "height") if given else ("init_image", "init_image")
    width, height = inner
    if request.task is Task.OUTPAINT:
        margins = request.outpaint
        assert margins is not None
        width += margins.left + margins.right
        height += margins.top + margins.bottom
        fields = ("outpaint", "outpaint")
        if width % spec.size_multiple or height % spec.size_multiple:
            raise PlanError("outpaint", "size_not_multiple",
                            f"the canvas {width}x{height} (image + margins) is not a multiple "
                            f"of {spec.size_multiple}, which model '{spec.name}' needs: "
                            "make left+right and top+bottom multiples of it")
    _check_fits(spec, width, height, *fields)
    return width, height, inner


def _upscale_sizes(
    spec: ModelSpec, init_size: tuple[int, int], scale: int
) -> tuple[int, int, tuple[int, int]]:
    if init_size[0] * init_size[1] > MAX_UPSCALE_INPUT_PIXELS:
        raise PlanError("init_image", "size_too_large",
                        f"init_image is {init_size[0]}x{init_size[1]}; upscale takes at most "
                        f"{MAX_UPSCALE_INPUT_PIXELS} pixels")
    # The input runs at its own size to a multiple of 8 (the model's latent grid).
    inner = image_task_size(init_size, None, None, spec.size_multiple)
    width, height = inner[0] * scale, inner[1] * scale
    try:
        _check_fits(spec, width, height, "init_image", "init_image")
    except PlanError as exc:
        raise PlanError(exc.field, exc.code,
                        f"init_image {inner[0]}x{inner[1]} upscaled {scale}x: {exc.message}"
                        ) from None
    return width, height, inner


def image_task_size(
    image_size: tuple[int, int], width: int | None, height: int | None,
    multiple: int = SIZE_MULTIPLE,
) -> tuple[int, int]:
    """The size an image task works at: the requested size, else the image's, rounded
    down to ``multiple``. With only one side given, the other follows the image's aspect.

    For outpaint this is the size of the init image inside the canvas.
    """
    img_w, img_h = image_size
    if width and height:
        return width, height
    if width:
        return width, _round_down(round(img_h * width / img_w), multiple)
    if height:
        return _round_down(round(img_w * height / img_h), multiple), height
    return _round_down(img_w, multiple), _round_down(img_h, multiple)


def _round_down(value: int, multiple: int) -> int:
    return max(multiple, value - value % multiple)


def _check_fits(spec: ModelSpec, width: int, height: int, width_field: str, height_field: str):
    if width < spec.min_width:
        raise PlanError(width_field, "size_too_small",
                        f"width {width} is under model '{spec.name}' minimum of {spec.min_width}")
    if height < spec.min_height:
        raise PlanError(height_field, "size_too_small",
                        f"height {height} is under model '{spec.name}' minimum of "
                        f"{spec.min_height}")
    if width > spec.max_width:
        raise PlanError(width_field, "size_too_large",
                        f"width {width} is over model '{spec.name}' maximum of {spec.max_width}")
    if height > spec.max_height:
        raise PlanError(height_field, "size_too_large",
                        f"height {height} is over model '{spec.name}' maximum of {spec.max_height}")


def _video(
    request: GenerationRequest, spec: ModelSpec, width: int, height: int,
    max_video_pixels: int | None,
) -> tuple[int | None, int | None]:
    """(frames per video, fps) of a video task; (None, None) for an image task."""
    if request.task not in VIDEO_TASKS:
        for name in ("num_frames", "fps"):
            if getattr(request, name) is not None:
                raise PlanError(name, "unexpected_input",
                                f"{name} is only used by task 'text-to-video', "
                                f"not '{request.task.value}'")
        return None, None
    frames = request.num_frames if request.num_frames is not None else spec.default_frames
    if not spec.min_frames <= frames <= spec.max_frames:
        raise PlanError("num_frames", "frames_out_of_range",
                        f"num_frames {frames} is outside model '{spec.name}' range of "
                        f"{spec.min_frames} to {spec.max_frames}")
    if (frames - 1) % spec.frame_step:
        raise PlanError("num_frames", "frames_not_allowed",
                        f"model '{spec.name}' makes 1 + a multiple of {spec.frame_step} frames "
                        f"(e.g. {frames - (frames - 1) % spec.frame_step}), not {frames}")
    fps = request.fps if request.fps is not None else spec.default_fps
    if fps > spec.max_fps:
        raise PlanError("fps", "fps_too_high",
                        f"fps {fps} is over model '{spec.name}' maximum of {spec.max_fps}")
    if max_video_pixels is not None and frames * width * height > max_video_pixels:
        raise PlanError("num_frames", "video_too_large",
                        f"{frames} frames of {width}x{height} are {frames * width * height} "
                        f"pixels; this service makes at most {max_video_pixels} per video "
                        "(LATENTD_MAX_VIDEO_PIXELS): fewer frames or a smaller size")
    return frames, fps


def _output_format(request: GenerationRequest) -> OutputFormat:
    """The file format: the request's, or the task's default when it names none."""
    video = request.task in VIDEO_TASKS
    if "output_format" not in request.model_fields_set:
        return DEFAULT_VIDEO_FORMAT if video else request.output_format
    allowed = VIDEO_FORMATS if video else IMAGE_FORMATS
    if request.output_format not in allowed:
        kind = "video" if video else "image"
        raise PlanError("output_format", "unsupported_output_format",
                        f"output_format '{request.output_format.value}' is not a {kind} format "
                        f"for task '{request.task.value}' (use: "
                        f"{', '.join(f.value for f in allowed)})")
    return request.output_format


def _negative_prompt(
    request: GenerationRequest, spec: ModelSpec, guidance_scale: float,
    warnings: list[PlanWarning],
) -> tuple[str | None, float | None]:
    """(negative prompt, true CFG scale) as they will run; see the rule at the top."""
    negative = request.negative_prompt or None
    true_cfg_scale = request.true_cfg_scale
    if true_cfg_scale is not None and not spec.true_cfg:
        raise PlanError(
            "true_cfg_scale", "unsupported_guidance",
            f"model '{spec.name}' has no true CFG (only Flux models do); "
            + ("use guidance_scale" if spec.guidance is GuidanceKind.CLASSIFIER_FREE
               else "leave true_cfg_scale out"),
        )
    if spec.true_cfg:
        if true_cfg_scale is not None and true_cfg_scale > CFG_THRESHOLD and negative is None:
            warnings.append(PlanWarning(
                field="true_cfg_scale",
                message="ignored: true CFG runs only with a negative prompt"))
            return None, None
        if negative is None:
            return None, None
        if true_cfg_scale is None or true_cfg_scale <= CFG_THRESHOLD:
            warnings.append(PlanWarning(
                field="negative_prompt",
                message=f"dropped: model '{spec.name}' reads a negative prompt only with "
                        f"true_cfg_scale above {CFG_THRESHOLD:g} (true CFG, two passes a step)",
            ))
            return None, None
        return negative, true_cfg_scale
    if negative is None:
        return None, None
    if spec.guidance is not GuidanceKind.CLASSIFIER_FREE:
        raise PlanError(
            "negative_prompt", "unsupported_negative_prompt",
            f"model '{spec.name}' has {spec.guidance.value} guidance, which takes no "
            "negative prompt",
        )
    if guidance_scale <= CFG_THRESHOLD:
        warnings.append(PlanWarning(
            field="negative_prompt",
            message=f"dropped: guidance_scale {guidance_scale:g} turns classifier-free "
                    f"guidance off, so a negative prompt has no effect (use a scale above "
                    f"{CFG_THRESHOLD:g})",
        ))
        return None, None
    return negative, None


def _scheduler(request: GenerationRequest, spec: ModelSpec) -> str:
    scheduler = request.scheduler or spec.default_scheduler
    if scheduler not in spec.schedulers:
        raise PlanError(
            "scheduler", "unsupported_scheduler",
            f"model '{spec.name}' does not run scheduler '{scheduler}' "
            f"(runs: {', '.join(spec.schedulers)})",
        )
    return scheduler


def _seeds(first: int, count: int) -> list[int]:
    # Image i depends on its own seed alone, so one image of a job can be re-made.
    return [(first + i) % (MAX_SEED + 1) for i in range(count)]


def _strength(request: GenerationRequest, steps: int, warnings: list[PlanWarning]) -> float | None:
    task, asked = request.task, request.strength
    if task is Task.UPSCALE:
        return None  # refused when asked (_check_upscale_fields)
    if task in _TEXT_TASKS:
        if asked is not None:
            warnings.append(PlanWarning(
                field="strength", message=f"ignored: {task.value} starts from pure noise"))
        return None
    if task is Task.OUTPAINT:
        if asked is not None and asked != OUTPAINT_STRENGTH:
            warnings.append(PlanWarning(
                field="strength",
                message=f"set to {OUTPAINT_STRENGTH:g}: outpaint always repaints the new area "
                        "from noise",
            ))
        return OUTPAINT_STRENGTH
    strength = asked if asked is not None else DEFAULT_STRENGTH
    # The pipelines run int(steps * strength) denoising steps; zero would fail on the GPU.
    if int(steps * strength) < 1:
        raise PlanError(
            "strength", "no_denoising_steps",
            f"strength {strength} leaves no denoising steps out of {steps}; "
            "raise strength or steps",
        )
    return strength


# Upscalers and video pipelines run outside the adapter-aware image path (worker/upscale.py,
# worker/video.py): a LoRA or ControlNet there would be ignored, so it is refused instead.
_ADAPTER_TASKS = frozenset({Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE, Task.INPAINT,
                            Task.OUTPAINT})


def _check_adapter_task(request: GenerationRequest, field: str) -> None:
    if getattr(request, field) and request.task not in _ADAPTER_TASKS:
        tasks = ", ".join(task.value for task in Task if task in _ADAPTER_TASKS)
        raise PlanError(field, "unsupported_for_task",
                        f"{field} applies to {tasks}, not to task '{request.task.value}'")


def _loras(request: GenerationRequest, spec: ModelSpec, adapters: Adapters) -> list[LoraRequest]:
    _check_adapter_task(request, "loras")
    seen: set[str] = set()
    for index, lora in enumerate(request.loras):
        field = f"loras.{index}.name"
        known = adapters.loras.get(lora.name)
        if known is None:
            raise PlanError(field, "unknown_lora", f"unknown LoRA '{lora.name}' (known: "
                            f"{names(adapters.loras)}; files in LATENTD_LORA_DIR)")
        if lora.name in seen:
            raise PlanError(field, "duplicate_lora", f"LoRA '{lora.name}' is listed twice")
        seen.add(lora.name)
        misfit = adapters.lora_fit(known, spec)
        if misfit is not None:
            raise PlanError(field, "incompatible_lora", misfit)
    return [LoraRequest(name=lora.name, scale=lora.scale) for lora in request.loras]


def _controls(
    request: GenerationRequest, spec: ModelSpec, adapters: Adapters
) -> list[ControlSettings]:
    seen: set[str] = set()
    _check_adapter_task(request, "control")
    for index, control in enumerate(request.control):
        known = adapters.controlnets.get(control.model)
        field = f"control.{index}.model"
        if known is None:
            raise PlanError(field, "unknown_controlnet",
                            f"unknown ControlNet '{control.model}' (known: "
                            f"{names(adapters.controlnets)})")
        if control.model in seen:
            # One module cannot take two images in one run; two copies of it would be needed.
            raise PlanError(field, "duplicate_controlnet",
                            f"ControlNet '{control.model}' is listed twice")
        seen.add(control.model)
        misfit = adapters.control_fit(known, spec)
        if misfit is not None:
            raise PlanError(field, "incompatible_controlnet", misfit)
        if control.start >= control.end:
            raise PlanError(f"control.{index}.end", "empty_control_range",
                            f"control end ({control.end}) must be above its start "
                            f"({control.start})")
    return [ControlSettings(**control.model_dump(include=set(ControlSettings.model_fields)))
            for control in request.control]
