"""The web playground at ``/``, end to end: a real headless Chromium (Playwright) drives the
page against the real service (API, Redis, the gated worker on tiny-random).

Held jobs (``metadata: {"hold": true}``, typed into the page's metadata field) stop after
their first step until the test releases them, so progress and cancel are observed at a
known point rather than raced.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.integration.conftest import Service
from tests.integration.gate import HOLD_METADATA_KEY

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (/usr/bin/chromium): "
                "apt-get install chromium, or `make test` as root", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 30_000
JOB_ID = re.compile(r"^job_[0-9a-f]{24}$")
HOLD = json.dumps({HOLD_METADATA_KEY: True})
IMAGE_LOADED = """selector => {
    const images = [...document.querySelectorAll(selector)];
    return images.length > 0 && images.every(img => img.complete && img.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: sync_api.Browser, service: Service) -> Iterator[sync_api.Page]:
    """The playground, loaded with its models listed; fails the test on a script error."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" else None)
    page.goto(service.url + "/")
    expect(page.locator("#model")).to_have_value("tiny-random")
    try:
        yield page
    finally:
        context.close()
    assert not errors


def submit(page: sync_api.Page, prompt: str, steps: int, metadata: str = "") -> str:
    """Fills the form, presses Generate; returns the new job's id once the page shows it."""
    shown = page.locator("#result").get_attribute("data-job-id")
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Steps").fill(str(steps))
    if metadata:
        page.locator("summary", has_text="Advanced").click()
        page.get_by_label("Metadata (JSON, echoed back on the job)").fill(metadata)
    page.get_by_role("button", name="Generate", exact=True).click()
    result = page.locator("#result")
    expect(result).to_have_attribute("data-job-id", JOB_ID)
    if shown:
        expect(result).not_to_have_attribute("data-job-id", shown)
    job_id = result.get_attribute("data-job-id")
    assert job_id is not None
    return job_id


def progress(page: sync_api.Page) -> float:
    return page.locator("#progress").evaluate("bar => bar.value")


def wait_for_images(page: sync_api.Page, selector: str = "#images img") -> None:
    page.wait_for_function(IMAGE_LOADED, arg=selector, timeout=TIMEOUT_MS)


def png_file(path: Path, size: tuple[int, int]) -> Path:
    image = Image.new("RGB", size, (200, 40, 40))
    for x in range(size[0] // 2):
        for y in range(size[1]):
            image.putpixel((x, y), (30, 90, 220))
    image.save(path, format="PNG")
    return path


def decode_png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def test_generate_shows_progress_then_the_image_with_its_parameters(
    page: sync_api.Page, service: Service
) -> None:
    before = progress(page)
    job_id = submit(page, "a playground apple", steps=4, metadata=HOLD)
    try:
        expect(page.locator("#progress-text")).to_contain_text("step 1 of 4")
        expect(page.locator("#progress-text")).to_contain_text(re.compile(r"about \d+ s left"))
        held = progress(page)
    finally:
        service.release(job_id)
    expect(page.locator("#job-status")).to_contain_text("succeeded")
    wait_for_images(page)
    done = progress(page)
    assert before < held < done == 1

    job = service.client.get(f"/v1/jobs/{job_id}").json()
    seed = job["images"][0]["seed"]
    expect(page.locator("#images figcaption")).to_contain_text(f"seed {seed}")
    page.locator("summary", has_text="Parameters").click()
    parameters = json.loads(page.locator("#parameters").inner_text())
    assert parameters["request"] == job["request"]
    assert parameters["request"]["prompt"] == "a playground apple"
    page.get_by_role("button", name="Reuse last seed").click()
    expect(page.get_by_label("Seed")).to_have_value(str(seed))


def test_cancel_stops_a_running_job(page: sync_api.Page, service: Service) -> None:
    job_id = submit(page, "never finished", steps=10, metadata=HOLD)
    try:
        expect(page.locator("#progress-text")).to_contain_text("step 1 of 10")
        page.get_by_role("button", name="Cancel", exact=True).click()
        expect(page.locator("#job-status")).to_contain_text("canceling")
    finally:
        service.release(job_id)
    expect(page.locator("#job-status")).to_contain_text(f"{job_id}: canceled")
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_disabled()
    assert page.locator("#images img").count() == 0
    assert service.client.get(f"/v1/jobs/{job_id}").json()["status"] == "canceled"


def test_recent_jobs_are_in_the_gallery_after_a_reload(
    page: sync_api.Page, service: Service
) -> None:
    first = submit(page, "gallery one", steps=2)
    expect(page.locator("#job-status")).to_contain_text(f"{first}: succeeded")
    second = submit(page, "gallery two", steps=2)
    expect(page.locator("#job-status")).to_contain_text(f"{second}: succeeded")

    page.reload()
    for job_id, prompt in ((first, "gallery one"), (second, "gallery two")):
        item = page.locator(f'#gallery li[data-job-id="{job_id}"]')
        expect(item).to_contain_text(prompt)
        expect(item).to_contain_text("succeeded")
    wait_for_images(page, f'#gallery li[data-job-id="{first}"] img')
    # Newest first, as GET /v1/jobs lists them.
    order = page.locator("#gallery li").evaluate_all("items => items.map(i => i.dataset.jobId)")
    assert order.index(second) < order.index(first)

    page.locator(f'#gallery li[data-job-id="{first}"] button').click()
    expect(page.locator("#result")).to_have_attribute("data-job-id", first)
    wait_for_images(page)


def test_image_to_image_from_an_uploaded_png(
    page: sync_api.Page, service: Service, tmp_path: Path
) -> None:
    page.get_by_label("Task").select_option("image-to-image")
    page.get_by_label("Image file").set_input_files(png_file(tmp_path / "in.png", (64, 48)))
    expect(page.locator("#canvas-stack")).to_be_visible()
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/v1/jobs")) as sent:
        job_id = submit(page, "an uploaded image", steps=4)
    body = sent.value.post_data_json
    assert decode_png(body["init_image"]).size == (64, 48)
    assert "mask_image" not in body

    expect(page.locator("#job-status")).to_contain_text(f"{job_id}: succeeded")
    wait_for_images(page)
    assert page.locator("#images img").evaluate("img => img.naturalWidth") == 64
    job = service.client.get(f"/v1/jobs/{job_id}").json()
    assert job["request"]["task"] == "image-to-image"
    assert (job["request"]["width"], job["request"]["height"]) == (64, 48)


def test_inpaint_sends_the_painted_mask(
    page: sync_api.Page, service: Service, tmp_path: Path
) -> None:
    page.get_by_label("Task").select_option("inpaint")
    page.get_by_label("Image file").set_input_files(png_file(tmp_path / "in.png", (64, 64)))
    mask = page.locator("#mask-canvas")
    expect(mask).to_be_visible()
    mask.scroll_into_view_if_needed()  # the mouse works in viewport coordinates
    box = mask.bounding_box()
    assert box is not None
    # A stroke across the top-left quarter.
    page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.2, steps=5)
    page.mouse.up()
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/v1/jobs")) as sent:
        job_id = submit(page, "a repainted corner", steps=4)
    painted = decode_png(sent.value.post_data_json["mask_image"]).convert("L")
    assert painted.size == (64, 64)
    assert painted.getpixel((16, 12)) == 255  # on the stroke: repaint
    assert painted.getpixel((48, 48)) == 0  # elsewhere: keep

    expect(page.locator("#job-status")).to_contain_text(f"{job_id}: succeeded")
    wait_for_images(page)
    assert service.client.get(f"/v1/jobs/{job_id}").json()["request"]["task"] == "inpaint"


def test_api_key_is_kept_and_sent_with_every_request(
    page: sync_api.Page, service: Service
) -> None:
    # With no key made, the service takes any key as the public owner: this checks that
    # the page sends it on every call (the event stream and the images included).
    key = "ltd_playground_test_key"
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Tab")
    page.reload()
    expect(page.get_by_label("API key")).to_have_value(key)

    sent: list[tuple[str, str | None]] = []
    page.on("request", lambda request: sent.append(
        (request.url, request.all_headers().get("authorization"))))
    job_id = submit(page, "with a key", steps=2)
    expect(page.locator("#job-status")).to_contain_text(f"{job_id}: succeeded")
    wait_for_images(page)
    api_calls = [(url, auth) for url, auth in sent if "/v1/" in url]
    assert any(url.endswith(f"/v1/jobs/{job_id}/events") for url, _ in api_calls)
    assert any(f"/v1/jobs/{job_id}/images/0" in url for url, _ in api_calls)
    assert {auth for _, auth in api_calls} == {f"Bearer {key}"}

    page.get_by_role("button", name="Forget", exact=True).click()
    page.reload()
    expect(page.get_by_label("API key")).to_have_value("")
