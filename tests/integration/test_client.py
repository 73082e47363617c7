"""The Python client, blocking and asyncio, against the real service over HTTP."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.client import AsyncClient, Client, LatentdError
from tests.integration.conftest import Service


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 160, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.fixture
def client(service: Service):
    with Client(service.url) as latentd:
        yield latentd


def test_generate_waits_for_the_job_and_its_images_are_the_asked_size(client: Client) -> None:
    job = client.generate("a red apple", width=48, height=32, steps=3, seed=5, num_images=2)
    assert job.status == "succeeded" and job.done
    assert job.request["seeds"] == [5, 6] and [i["seed"] for i in job.images] == [5, 6]
    for info in job.images:
        image = open_image(client.image(job.id, info["index"]))
        assert image.format == "PNG" and image.size == (48, 32)
        assert f"Seed: {info['seed']}" in image.info["parameters"]


def test_events_follow_a_job_from_queued_to_completed(client: Client) -> None:
    job = client.submit("a blue bird", steps=3)
    events = list(client.events(job.id))
    types = [e.type for e in events]
    assert types[0] in ("queued", "started", "progress", "completed")
    assert types[-1] == "completed" and events[-1].job.status == "succeeded"
    assert all(e.job.id == job.id for e in events)
    steps = [e.job.progress["step"] for e in events if e.type == "progress"]
    assert steps == sorted(steps) and all(1 <= s <= 3 for s in steps)


def test_image_bytes_are_uploaded_and_run_as_an_image_task(client: Client) -> None:
    job = client.generate("a cat", task="image-to-image", init_image=png((80, 56)), steps=4)
    assert (job.request["width"], job.request["height"]) == (80, 56)
    assert open_image(client.image(job.id, 0)).size == (80, 56)
    wide = client.generate("a cat", task="outpaint", init_image=png((64, 48)), steps=2,
                           outpaint={"left": 8, "top": 8})
    assert open_image(client.image(wide.id, 0)).size == (72, 56)


def test_a_refusal_is_a_latentd_error_naming_the_field(client: Client) -> None:
    with pytest.raises(LatentdError) as raised:
        client.submit("x", steps=500)
    assert (raised.value.status_code, raised.value.code, raised.value.field) == (
        422, "invalid_request", "steps")
    with pytest.raises(LatentdError) as raised:
        client.submit("x", task="image-to-image", init_image=b"not an image")
    assert (raised.value.field, raised.value.code) == ("init_image", "unsupported_image_format")


def test_list_cancel_delete_and_models(client: Client, service: Service) -> None:
    held = service.submit_held({"prompt": "held", "steps": 10})
    assert held in [j.id for j in client.list("running", limit=100).jobs]
    assert client.cancel(held).status == "running"  # stops within a step
    service.release(held)
    assert client.wait(held, timeout=60).status == "canceled"

    client.delete(held)
    with pytest.raises(LatentdError) as raised:
        client.get(held)
    assert raised.value.status_code == 404 and raised.value.code == "job_not_found"

    served = {m["name"]: m for m in client.models()}
    assert served["tiny-random"]["available"] is True


@pytest.mark.anyio
async def test_the_async_client_does_the_same_over_http(service: Service) -> None:
    async with AsyncClient(service.url) as client:
        job = await client.generate("a green leaf", steps=2, width=40, height=40)
        assert job.status == "succeeded"
        assert open_image(await client.image(job.id, 0)).size == (40, 40)
        assert [e.type async for e in client.events(job.id)] == ["completed"]
        page = await client.list(limit=100)
        assert job.id in [j.id for j in page.jobs]
        assert "tiny-random" in [m["name"] for m in await client.models()]
        uploaded = await client.generate("a cat", task="image-to-image",
                                         init_image=png((64, 64)), steps=4)
        assert uploaded.status == "succeeded"
        with pytest.raises(LatentdError) as raised:
            await client.get("job_" + "0" * 24)
        assert raised.value.code == "job_not_found"
        await client.delete(job.id)
