"""The official ``openai`` client against the running service (tiny-random, real workers):
generations, edits and variations as OpenAI's own code calls them."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from PIL import Image

from tests.integration.conftest import Service


@pytest.fixture(scope="module")
def client(service: Service) -> Iterator[openai.OpenAI]:
    # No key exists on the test service, so any key is accepted; retries off so a failure
    # shows at once.
    with openai.OpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0,
                       timeout=120) as openai_client:
        yield openai_client


def png(size: tuple[int, int], clear: tuple[int, int, int, int] | None = None) -> bytes:
    """An opaque PNG; ``clear``: a box (left, top, right, bottom) made fully transparent."""
    image = Image.new("RGBA", size, (30, 120, 200, 255))
    if clear is not None:
        image.paste((0, 0, 0, 0), clear)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(items: list[openai.types.Image]) -> list[Image.Image]:
    images = []
    for item in items:
        assert item.b64_json is not None and item.url is None
        image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        image.load()
        assert image.format == "PNG"
        images.append(image)
    return images


def job_behind(service: Service, response: Any) -> dict:
    """The latentd job that answered a raw-response call."""
    return service.client.get(f"/v1/jobs/{response.headers['X-Latentd-Job-Id']}").json()


def test_generate_answers_urls_on_the_service(client: openai.OpenAI, service: Service) -> None:
    result = client.images.generate(prompt="a red apple", n=2, size="64x48",
                                    response_format="url", model="dall-e-3")
    assert len(result.data or []) == 2 and result.size == "64x48"
    for item in result.data or []:
        assert item.url is not None and item.url.startswith(service.url + "/v1/jobs/job_")
        assert item.revised_prompt == "a red apple"
        fetched = service.client.get(item.url)
        assert fetched.status_code == 200, fetched.text
        image = Image.open(io.BytesIO(fetched.content))
        assert (image.format, image.size) == ("PNG", (64, 48))
        assert "Model: tiny-random" in image.info["parameters"]


def test_generate_b64_json_maps_openai_sizes_onto_the_model(client: openai.OpenAI) -> None:
    result = client.images.generate(prompt="a blue bird", n=3, size="1024x1024",
                                    quality="low", response_format="b64_json")
    # tiny-random makes 64x64 natively: OpenAI's square size runs at that scale.
    assert result.size == "64x64" and result.created > 0
    images = decoded(result.data or [])
    assert [image.size for image in images] == [(64, 64)] * 3
    assert len({image.tobytes() for image in images}) == 3  # three seeds, three images


def test_generation_jobs_are_ordinary_jobs(client: openai.OpenAI, service: Service) -> None:
    raw = client.images.with_raw_response.generate(prompt="x", size="1792x1024", quality="hd",
                                                   style="natural", user="tester")
    job = job_behind(service, raw)
    assert job["status"] == "succeeded" and job["id"] in [
        j["id"] for j in service.client.get("/v1/jobs?limit=100").json()["jobs"]]
    plan = job["request"]
    assert (plan["width"], plan["height"], plan["steps"], plan["guidance_scale"]) == (
        112, 64, 8, 3.5)
    assert job["metadata"]["openai"]["user"] == "tester"
    assert raw.parse().size == "112x64"


def test_edit_with_a_mask_inpaints(client: openai.OpenAI, service: Service) -> None:
    raw = client.images.with_raw_response.edit(
        image=("photo.png", png((64, 64)), "image/png"),
        mask=("mask.png", png((64, 64), clear=(0, 0, 32, 64)), "image/png"),
        prompt="a cat", n=2, response_format="b64_json",
    )
    result = raw.parse()
    assert [image.size for image in decoded(result.data or [])] == [(64, 64)] * 2
    assert [item.revised_prompt for item in result.data or []] == ["a cat", "a cat"]
    plan = job_behind(service, raw)["request"]
    assert (plan["task"], plan["strength"]) == ("inpaint", 1.0)


def test_edit_of_a_transparent_image_inpaints_its_transparent_area(
    client: openai.OpenAI, service: Service
) -> None:
    raw = client.images.with_raw_response.edit(
        image=("cutout.png", png((48, 40), clear=(8, 8, 40, 32)), "image/png"),
        prompt="a dog", response_format="b64_json",
    )
    [image] = decoded(raw.parse().data or [])
    assert image.size == (48, 40)
    assert job_behind(service, raw)["request"]["task"] == "inpaint"


# The client marks variations deprecated (OpenAI retired DALL·E 2); the route works here.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_variation_redraws_the_image(client: openai.OpenAI, service: Service) -> None:
    raw = client.images.with_raw_response.create_variation(
        image=("photo.png", png((64, 56)), "image/png"), n=2, response_format="b64_json")
    result = raw.parse()
    assert [image.size for image in decoded(result.data or [])] == [(64, 56)] * 2
    plan = job_behind(service, raw)["request"]
    assert (plan["task"], plan["prompt"]) == ("image-to-image", "")


def test_a_size_the_model_cannot_make_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt="x", size="2048x2048")
    assert refused.value.status_code == 400
    assert (refused.value.param, refused.value.code) == ("size", "unsupported_size")
    assert "512x512" in refused.value.message


def test_other_bad_input_is_a_bad_request_naming_the_parameter(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt="x", n=9)
    assert refused.value.param == "n"
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(image=("a.png", png((64, 64)), "image/png"),
                           mask=("m.png", png((64, 64)), "image/png"), prompt="x")
    assert refused.value.param == "mask"
