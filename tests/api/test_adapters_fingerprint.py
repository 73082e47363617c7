"""Idempotency fingerprints of requests with control images: the images count, by value,
without being copied into the canonical JSON."""

from __future__ import annotations

from api.services.jobs import fingerprint
from shared.schemas import GenerationRequest


def request(image: str, scale: float = 1.0) -> GenerationRequest:
    return GenerationRequest.model_validate({
        "prompt": "p", "loras": [{"name": "ink", "scale": scale}],
        "control": [{"model": "canny", "image": image}]})


def test_control_images_and_lora_scales_are_part_of_the_fingerprint() -> None:
    assert fingerprint(request("aaaa")) == fingerprint(request("aaaa"))
    assert fingerprint(request("aaaa")) != fingerprint(request("aaab"))
    assert fingerprint(request("aaaa")) != fingerprint(request("aaaa", scale=0.5))
    # The control image is not also an init image: the two fields hash apart.
    moved = GenerationRequest.model_validate({
        "prompt": "p", "loras": [{"name": "ink"}], "init_image": "aaaa",
        "control": [{"model": "canny", "image": "bbbb"}]})
    assert fingerprint(moved) != fingerprint(request("aaaa"))
