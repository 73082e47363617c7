"""The job record says what ran, and so does every PNG: one job per task over HTTP, each
image's ``parameters`` chunk compared field by field with the job the API returns."""

from __future__ import annotations

import base64
import io
import re

import pytest
from PIL import Image

from tests.integration.conftest import DISTILLED_MODEL, Service
from worker.schedulers import A1111_SAMPLER_NAMES


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


INIT = png_b64(Image.new("RGB", (100, 70), (0, 160, 40)))
MASK = Image.new("L", (100, 70), 0)
MASK.paste(255, (0, 0, 50, 70))

CASES = {
    "text-to-image": {"prompt": "a red apple", "negative_prompt": "blurry", "width": 64,
                      "height": 48, "num_images": 2, "steps": 3, "guidance_scale": 6,
                      "scheduler": "euler_ancestral", "seed": 11},
    "image-to-image": {"task": "image-to-image", "prompt": "a field", "init_image": INIT,
                       "steps": 6, "strength": 0.5, "scheduler": "dpmpp_2m", "seed": 12},
    "inpaint": {"task": "inpaint", "prompt": "a hole", "init_image": INIT,
                "mask_image": png_b64(MASK), "width": 64, "height": 64, "steps": 4,
                "negative_prompt": "red"},
    "outpaint": {"task": "outpaint", "prompt": "more sky", "init_image": INIT, "width": 48,
                 "outpaint": {"left": 16, "right": 8, "bottom": 16}, "strength": 0.3,
                 "steps": 3},
    "guidance off": {"prompt": "a cat", "negative_prompt": "a dog", "guidance_scale": 1,
                     "steps": 2},
    "distilled model": {"model": DISTILLED_MODEL, "prompt": "a cat", "steps": 2},
}
# What the service changes in each case, by the field it names.
EXPECTED_WARNINGS = {"outpaint": ["strength"], "guidance off": ["negative_prompt"]}
# The PNG names guidance for what it is (Forge's names for a distilled scale).
GUIDANCE_LABEL = {"classifier-free": "CFG scale", "distilled": "Distilled CFG Scale"}


def parameters(image: Image.Image) -> tuple[str, str | None, dict[str, str]]:
    """AUTOMATIC1111's text: (prompt, negative prompt, {"Steps": "3", ...})."""
    lines = image.info["parameters"].split("\n")
    negative = None
    if len(lines) == 3:
        negative = lines[1].removeprefix("Negative prompt: ")
    fields = dict(re.findall(r"([A-Za-z ]+): ([^,]+)(?:, |$)", lines[-1]))
    return lines[0], negative, fields


@pytest.mark.parametrize("case", CASES)
def test_png_parameters_agree_with_the_job_record(service: Service, case: str) -> None:
    job = service.run(CASES[case])
    plan = job["request"]
    assert [w["field"] for w in job["warnings"]] == EXPECTED_WARNINGS.get(case, [])
    assert len(job["images"]) == plan["num_images"]
    for info in job["images"]:
        image = Image.open(io.BytesIO(service.image(job, info["index"])))
        prompt, negative, fields = parameters(image)
        assert prompt == plan["prompt"]
        assert negative == plan["negative_prompt"]
        assert int(fields["Steps"]) == plan["steps"]
        assert fields["Sampler"] == A1111_SAMPLER_NAMES[plan["scheduler"]]
        assert float(fields[GUIDANCE_LABEL[plan["guidance"]]]) == plan["guidance_scale"]
        assert int(fields["Seed"]) == info["seed"] == plan["seeds"][info["index"]]
        assert fields["Size"] == f"{plan['width']}x{plan['height']}"
        assert image.size == (plan["width"], plan["height"]) == (info["width"], info["height"])
        assert fields["Model"] == plan["model"]
        if plan["strength"] is None:
            assert "Denoising strength" not in fields
        else:
            assert float(fields["Denoising strength"]) == plan["strength"]


def test_outpaint_job_is_the_inner_size_plus_the_margins(service: Service) -> None:
    job = service.run(CASES["outpaint"])
    # width 48 sizes the init image (100x70 → 48x32, its aspect), the margins grow it.
    assert (job["request"]["width"], job["request"]["height"]) == (48 + 24, 32 + 16)
    assert job["request"]["strength"] == 1.0


def test_a_negative_prompt_a_model_can_never_read_is_refused(service: Service) -> None:
    # Distilled guidance without true CFG: no scale would make it count.
    response = service.client.post("/v1/jobs", json={
        "model": DISTILLED_MODEL, "prompt": "a cat", "negative_prompt": "a dog"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "negative_prompt"
