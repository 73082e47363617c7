"""The pinned MiniLM text encoder: verified before loading, shaped as the UNet expects."""

from __future__ import annotations

import shutil

import pytest
import torch

from models.text_encoder import (
    MAX_CAPTION_TOKENS,
    PINNED_SHA256,
    TEXT_EMBED_DIM,
    bundled_model_dir,
    encode_captions,
    load_text_encoder,
    verify_model_dir,
)

# The longest dataset caption behind the longest training template.
LONGEST_TRAINING_PROMPT = (
    "an emoji of couple with heart: man, man, medium-light skin tone, medium-light skin tone"
)


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder()


def test_bundled_package_matches_pins():
    verify_model_dir(bundled_model_dir())


@pytest.mark.parametrize("tampered", sorted(PINNED_SHA256))
def test_tampered_copy_is_refused(tmp_path, tampered):
    for name in PINNED_SHA256:
        shutil.copyfile(bundled_model_dir() / name, tmp_path / name)
    data = bytearray((tmp_path / tampered).read_bytes())
    data[-1] ^= 0x01  # last byte: the file still parses, only its hash changes
    (tmp_path / tampered).write_bytes(bytes(data))

    with pytest.raises(ValueError, match=f"{tampered}.*sha256"):
        load_text_encoder(tmp_path)


def test_missing_file_is_refused(tmp_path):
    shutil.copyfile(bundled_model_dir() / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match="missing"):
        load_text_encoder(tmp_path)


def test_encoder_is_frozen_and_masks_padding(encoder):
    tokenizer, text_encoder = encoder
    assert not text_encoder.training
    assert not any(p.requires_grad for p in text_encoder.parameters())
    # StableDiffusionPipeline passes the attention mask only when this is set.
    assert text_encoder.config.use_attention_mask is True
    assert tokenizer.model_max_length == MAX_CAPTION_TOKENS


def test_states_have_the_unet_cross_attention_shape(encoder):
    states = encode_captions(*encoder, ["cat face", ""])
    assert states.shape == (2, MAX_CAPTION_TOKENS, TEXT_EMBED_DIM)
    assert torch.isfinite(states).all()


def test_longest_training_prompt_is_not_truncated(encoder):
    tokenizer, _ = encoder
    assert len(tokenizer(LONGEST_TRAINING_PROMPT).input_ids) <= MAX_CAPTION_TOKENS
