"""LoRA adapters and ControlNet models a request may add to its base model. Pure: file
headers and JSON configs are read, never weights, so the API validates without torch.

- LoRA: every ``<name>.safetensors`` in ``LATENTD_LORA_DIR`` (name = file stem).
- ControlNet: a ``LATENTD_MODELS`` entry whose source is a folder saved by
  ``ControlNetModel.save_pretrained`` (``config.json`` names ``ControlNetModel`` and there
  is no ``model_index.json``); it is a control model, not a generation model.

What fits which base model is told from shapes: a LoRA's cross-attention input width
(768 for SD 1.x, 1024 for SD 2.x, 2048 for SDXL) against the base UNet's, and a
ControlNet's UNet-side config (cross-attention width, SDXL's time embedding, channel
widths) against the base UNet's config. Where the base's UNet cannot be read here (a hub
id), the worker judges when it attaches the adapter.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from shared.model_registry import EMBEDDED_PREFIX, EMOJI, TINY_RANDOM, ModelFamily, ModelSpec

logger = logging.getLogger(__name__)

LORA_SUFFIX = ".safetensors"
# Names become PEFT adapter names (module-dict keys: no dots) and appear in PNG text.
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$"
_ADAPTER_NAME = re.compile(ADAPTER_NAME_PATTERN)
# A safetensors header is JSON of names and shapes; real LoRAs have a few hundred KB.
MAX_HEADER_BYTES = 64 * 1024 * 1024
CONTROLNET_CLASS = "ControlNetModel"
# The UNet config keys a ControlNet must share with its base UNet to be added to it
# (not in_channels: an inpainting UNet takes 9, and the usual 4-channel ControlNets fit it).
_CONTROL_SHAPE_KEYS = ("cross_attention_dim", "addition_embed_type", "block_out_channels")
# Built-in models' UNets, as their builders make them (checked against the real modules by
# tests/worker/test_engine_adapters.py); the emoji model ships its config with its weights.
_BUILTIN_UNET_CONFIGS: dict[str, dict[str, Any]] = {
    TINY_RANDOM: {"cross_attention_dim": 32, "addition_embed_type": None,
                  "block_out_channels": [32, 64], "in_channels": 4},
}
_EMOJI_UNET_CONFIG = Path(__file__).resolve().parents[1] / "models" / EMOJI / "unet" / "config.json"
# Families whose denoiser is a transformer: no UNet for a UNet LoRA or a ControlNetModel.
_TRANSFORMER_FAMILIES = (ModelFamily.SD3, ModelFamily.FLUX)


@dataclass(frozen=True)
class LoraFile:
    """One LoRA file and what its header says about the UNet it was trained on."""

    name: str
    path: Path
    # Input width of its UNet cross-attention keys; None when it has none (e.g. a
    # text-encoder-only or a transformer LoRA).
    cross_attention_dim: int | None


@dataclass(frozen=True)
class ControlNetSpec:
    name: str
    source: Path
    config: Mapping[str, Any]

    @property
    def family(self) -> str:
        return unet_family(self.config)


@dataclass
class Adapters:
    """The LoRAs and ControlNets this deployment offers (empty when none are configured)."""

    loras: dict[str, LoraFile] = field(default_factory=dict)
    controlnets: dict[str, ControlNetSpec] = field(default_factory=dict)

    @classmethod
    def from_sources(cls, lora_dir: Path | None, models: Mapping[str, object]) -> Adapters:
        """Scan ``lora_dir`` and pick the ControlNet folders out of ``LATENTD_MODELS``."""
        controlnets = {}
        for name, entry in models.items():
            source = controlnet_source(entry)
            if source is not None:
                controlnets[name] = ControlNetSpec(name, source, _read_json(source / "config.json"))
        return cls(loras=scan_loras(lora_dir), controlnets=controlnets)

    def lora_fit(self, lora: LoraFile, spec: ModelSpec) -> str | None:
        """Why ``lora`` cannot be added to ``spec``'s model, or None when it can (or where
        only the worker can tell)."""
        base = base_unet_config(spec)
        if lora.cross_attention_dim is not None and spec.family in _TRANSFORMER_FAMILIES:
            return (f"LoRA '{lora.name}' was made for a UNet "
                    f"({_family_by_width(lora.cross_attention_dim)}); model '{spec.name}' "
                    f"({spec.family.value}) has a transformer")
        if base is None or lora.cross_attention_dim is None:
            return None
        width = base.get("cross_attention_dim")
        if width != lora.cross_attention_dim:
            return (f"LoRA '{lora.name}' was made for a UNet with {lora.cross_attention_dim}-wide "
                    f"cross-attention ({_family_by_width(lora.cross_attention_dim)}); model "
                    f"'{spec.name}' has {width} ({unet_family(base)})")
        return None

    def control_fit(self, control: ControlNetSpec, spec: ModelSpec) -> str | None:
        """Why ``control`` cannot steer ``spec``'s model, or None when it can (or where only
        the worker can tell)."""
        if spec.family in _TRANSFORMER_FAMILIES:
            return (f"ControlNet '{control.name}' ({control.family}) steers a UNet; model "
                    f"'{spec.name}' ({spec.family.value}) has a transformer")
        base = base_unet_config(spec)
        if base is None:
            return None
        return control_mismatch(control, base, spec.name)

    def loras_for(self, spec: ModelSpec) -> list[str]:
        return [name for name, lora in self.loras.items() if self.lora_fit(lora, spec) is None]

    def controlnets_for(self, spec: ModelSpec) -> list[str]:
        return [name for name, control in self.controlnets.items()
                if self.control_fit(control, spec) is None]


def control_mismatch(control: ControlNetSpec, base: Mapping[str, Any], model: str) -> str | None:
    """Which UNet config value ``control`` does not share with ``base`` (None: it fits)."""
    for key in _CONTROL_SHAPE_KEYS:
        theirs, ours = _normal(control.config.get(key)), _normal(base.get(key))
        if theirs != ours:
            return (f"ControlNet '{control.name}' ({control.family}) does not fit model "
                    f"'{model}' ({unet_family(base)}): {key} is {theirs}, the model's is {ours}")
    return None


def _normal(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def controlnet_source(entry: object) -> Path | None:
    """The folder of a ``LATENTD_MODELS`` entry when it is a saved ControlNetModel."""
    source = entry if isinstance(entry, str) else (
        entry.get("source") if isinstance(entry, dict) else None)
    if not isinstance(source, str):
        return None
    folder = Path(source).expanduser()
    if (folder / "model_index.json").exists():
        return None
    try:
        config = _read_json(folder / "config.json")
    except (OSError, ValueError):
        return None
    return folder if config.get("_class_name") == CONTROLNET_CLASS else None


def scan_loras(lora_dir: Path | None) -> dict[str, LoraFile]:
    """Every readable ``*.safetensors`` in ``lora_dir`` by stem; others are logged and skipped."""
    if lora_dir is None or not lora_dir.is_dir():
        return {}
    loras = {}
    for path in sorted(lora_dir.glob("*" + LORA_SUFFIX)):
        name = path.name.removesuffix(LORA_SUFFIX)
        if not _ADAPTER_NAME.match(name):
            logger.warning("LoRA %s skipped: names are letters, digits, '_' and '-'", path)
            continue
        try:
            header = read_safetensors_header(path)
        except (OSError, ValueError) as exc:
            logger.warning("LoRA %s skipped: not a safetensors file (%s)", path, exc)
            continue
        loras[name] = LoraFile(name, path, _cross_attention_width(header))
    return loras


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor names and shapes at the start of a safetensors file (no tensor data)."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError("file is shorter than a safetensors header")
        (size,) = struct.unpack("<Q", prefix)
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"header of {size} bytes is implausibly large")
        header = json.loads(handle.read(size))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")  # noqa: TRY004 (bad file content)
    return header


def _cross_attention_width(header: Mapping[str, Any]) -> int | None:
    """Input width of the LoRA's cross-attention key projection, in any of the usual
    layouts: diffusers/PEFT (``attn2.to_k.lora_A``), older diffusers (``lora.down``) and
    kohya (``attn2_to_k.lora_down``)."""
    for key, info in header.items():
        if key == "__metadata__" or not isinstance(info, dict):
            continue
        flat = key.replace(".", "_")
        if "attn2_to_k" in flat and ("lora_A" in key or "lora_down" in flat) and (
                "unet" in flat or "down_blocks" in flat or "input_blocks" in flat):
            shape = info.get("shape")
            if isinstance(shape, list) and len(shape) >= 2:
                return int(shape[1])
    return None


def base_unet_config(spec: ModelSpec) -> Mapping[str, Any] | None:
    """The base model's UNet config, where it can be read here (a single-file checkpoint's
    from its config folder); None otherwise."""
    return _unet_config_of(spec.config or spec.source)


# Read once per source: every submit with adapters and every /v1/models asks again.
@lru_cache(maxsize=256)
def _unet_config_of(source: str) -> Mapping[str, Any] | None:
    if source.startswith(EMBEDDED_PREFIX):
        name = source.removeprefix(EMBEDDED_PREFIX)
        if name == EMOJI:
            return _read_json_or_none(_EMOJI_UNET_CONFIG)
        return _BUILTIN_UNET_CONFIGS.get(name)
    return _read_json_or_none(Path(source).expanduser() / "unet" / "config.json")


def unet_family(config: Mapping[str, Any]) -> str:
    """A readable family for a UNet (or ControlNet) config."""
    if config.get("addition_embed_type") == "text_time":
        return "SDXL"
    return _family_by_width(config.get("cross_attention_dim"))


def _family_by_width(width: object) -> str:
    return {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}.get(width, f"{width}-wide")  # type: ignore[call-overload]


def _read_json(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a JSON object")  # noqa: TRY004 (bad file content)
    return value


def _read_json_or_none(path: Path) -> dict[str, Any] | None:
    try:
        return _read_json(path)
    except (OSError, ValueError):
        return None


def names(items: Iterable[str]) -> str:
    return ", ".join(sorted(items)) or "none"
