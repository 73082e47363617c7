"""text-to-video through the real service: tiny random-weight AnimateDiff and CogVideoX
pipelines saved with ``save_pretrained`` and served from their folders via
``LATENTD_MODELS``, submitted, followed, canceled and fetched over HTTP like image jobs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image

from scripts.service_processes import running_service
from tests.integration.conftest import Service
from tests.integration.test_bad_input import broker_backlog
from tests.integration.test_cli import COMMAND as CLI_COMMAND
from tests.job_events import Listener
from tests.videos import mean_difference, read_video

VIDEO_MODEL = "tiny-video"
COGVIDEOX = "tiny-cogvideox"
MAX_FRAMES = 8
# 9 frames of 32x32 fit (CogVideoX's shortest clip); anything larger is refused.
MAX_VIDEO_PIXELS = 9 * 32 * 32
CLIP = {"task": "text-to-video", "model": VIDEO_MODEL, "prompt": "a fox running",
        "num_frames": 4, "fps": 10, "steps": 2, "width": 32, "height": 32}
# The same seed gives the same video up to rounding: one worker process running the same
# job twice has been seen to differ in the later frames (its poster frame was the same),
# most likely CPU kernels' float rounding flipping a uint8 value here and there, which
# H.264 then spreads over its block. Measured up to 1.16 (mean, of 255) on a loaded 2-core
# machine; different seeds differ by far more.
SAME_SEED_TOLERANCE = 2.0
CONTENT_TYPES = {"mp4": "video/mp4", "webp": "image/webp", "gif": "image/gif"}


@pytest.fixture(scope="module")
def video_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from worker.video import build_tiny_animatediff_pipeline, build_tiny_cogvideox_pipeline

    folder = tmp_path_factory.mktemp("tiny-animatediff")
    build_tiny_animatediff_pipeline().save_pretrained(folder)
    cogvideox = tmp_path_factory.mktemp("tiny-cogvideox")
    build_tiny_cogvideox_pipeline().save_pretrained(cogvideox)
    # The folder's model_index.json says AnimateDiffPipeline: the service makes it a
    # text-to-video model; these values only shrink its bounds to the tiny weights.
    models = {VIDEO_MODEL: {"source": str(folder), "default_width": 32, "default_height": 32,
                            "min_width": 32, "min_height": 32, "max_width": 128,
                            "max_height": 128, "default_steps": 2, "default_frames": 4,
                            "max_frames": MAX_FRAMES},
              # Its folder says CogVideoXPipeline: 8k+1 frames, sizes in multiples of 16.
              COGVIDEOX: {"source": str(cogvideox), "default_width": 32,
                          "default_height": 32, "default_frames": 9}}
    env = {"LATENTD_MODELS": json.dumps(models), "LATENTD_DEFAULT_MODEL": VIDEO_MODEL,
           "LATENTD_WORKER_MODELS": f"{VIDEO_MODEL},{COGVIDEOX}",
           "LATENTD_MAX_VIDEO_PIXELS": str(MAX_VIDEO_PIXELS)}
    with running_service(tmp_path_factory.mktemp("video-service"), env,
                         generation_app="tests.integration.gated_worker") as processes:
        client = httpx.Client(base_url=processes.url, timeout=30)
        try:
            yield Service(processes.url, processes.redis_url, processes.data_dir,
                          processes.webhook_secret, client)
        finally:
            client.close()


@pytest.mark.parametrize("fmt", ["mp4", "webp", "gif"])
def test_a_clip_comes_back_as_an_animated_file_with_its_poster(
    video_service: Service, fmt: str
) -> None:
    started = time.monotonic()
    job = video_service.run({**CLIP, "output_format": fmt, "seed": 11})
    seconds = time.monotonic() - started
    (info,) = job["images"]
    assert info["content_type"] == CONTENT_TYPES[fmt]
    assert (info["frames"], info["fps"], info["seed"], info["width"]) == (4, 10, 11, 32)
    assert job["request"]["num_frames"] == 4 and job["request"]["output_format"] == fmt
    response = video_service.client.get(info["url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPES[fmt]
    frames, fps, parameters = read_video(response.content)
    assert (frames, fps) == (4, pytest.approx(10))
    assert parameters.startswith("a fox running\n") and "Seed: 11" in parameters
    poster = video_service.client.get(info["poster_url"])
    assert poster.status_code == 200 and poster.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(poster.content)) as image:
        assert image.size == (32, 32) and "Frames: 4, FPS: 10" in image.info["parameters"]
    print(f"\n{fmt}: one 4-frame 32x32 2-step video job in {seconds:.2f} s over HTTP "
          f"(inference {job['metrics']['inference_seconds']} s)")


def test_a_cogvideox_clip_comes_back_with_its_frames(video_service: Service) -> None:
    job = video_service.run({**CLIP, "model": COGVIDEOX, "num_frames": 9, "seed": 2,
                             "output_format": "webp"})
    (info,) = job["images"]
    assert (info["frames"], info["fps"], info["content_type"]) == (9, 10, "image/webp")
    frames, fps, parameters = read_video(video_service.image(job))
    assert (frames, fps) == (9, pytest.approx(10)) and "Model: tiny-cogvideox" in parameters


def test_no_format_named_gives_mp4_and_the_same_seed_the_same_video(
    video_service: Service
) -> None:
    first = video_service.run({**CLIP, "seed": 5})
    again = video_service.run({**CLIP, "seed": 5})
    other = video_service.run({**CLIP, "seed": 6})
    assert first["images"][0]["content_type"] == "video/mp4"
    data = [video_service.image(job) for job in (first, again, other)]
    same, different = mean_difference(data[0], data[1]), mean_difference(data[0], data[2])
    print(f"\nsame seed: mean pixel difference {same:.3f}; other seed: {different:.1f}")
    assert same < SAME_SEED_TOLERANCE < different


def test_several_videos_each_with_its_seed_and_progress_over_all(
    video_service: Service
) -> None:
    job_id = video_service.submit_held({**CLIP, "num_images": 2, "seed": 20, "steps": 3})
    listener = Listener(redis.Redis.from_url(video_service.redis_url, decode_responses=True),
                        job_id)
    try:
        video_service.release(job_id)
        job = video_service.wait(job_id)
        events = listener.drain()
    finally:
        listener.close()
    assert job["status"] == "succeeded"
    assert [(i["index"], i["seed"], i["frames"]) for i in job["images"]] == [
        (0, 20, 4), (1, 21, 4)]
    steps = [(e.job.progress.step, e.job.progress.total_steps)
             for e in events if e.type == "progress"]
    assert steps and steps == sorted(steps) and steps[-1] == (6, 6)
    assert events[-1].type == "completed"
    one = video_service.run({**CLIP, "seed": 21, "steps": 3})
    assert mean_difference(video_service.image(job, 1), video_service.image(one)) < (
        SAME_SEED_TOLERANCE)


def test_cancel_stops_a_running_video_within_a_step(video_service: Service) -> None:
    job_id = video_service.submit_held({**CLIP, "steps": 6})
    assert video_service.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    video_service.release(job_id)
    job = video_service.wait(job_id)
    assert job["status"] == "canceled" and job["error"]["code"] == "canceled"
    assert (job["progress"]["step"], job["progress"]["total_steps"]) == (1, 6)
    assert job["images"] == []
    assert not list(Path(video_service.data_dir).glob(f"**/{job_id}/images/*"))


@pytest.mark.parametrize(("case", "fields", "field", "code"), [
    ("over the model's frames", {"num_frames": MAX_FRAMES + 1}, "num_frames",
     "frames_out_of_range"),
    ("over the pixel cap", {"num_frames": 8, "width": 64}, "num_frames", "video_too_large"),
    ("fps over the model's", {"fps": 31}, "fps", "fps_too_high"),
    ("a still format", {"output_format": "png"}, "output_format", "unsupported_output_format"),
    ("an image task on a video model", {"task": "text-to-image"}, "task", "unsupported_task"),
    ("over the model's width", {"width": 136, "num_frames": 2}, "width", "size_too_large"),
    ("frames CogVideoX cannot make", {"model": COGVIDEOX, "num_frames": 12}, "num_frames",
     "frames_not_allowed"),
    ("a size CogVideoX cannot patch", {"model": COGVIDEOX, "num_frames": 9, "width": 40},
     "width", "size_not_multiple"),
    ("a sampler CogVideoX lacks", {"model": COGVIDEOX, "num_frames": 9, "scheduler": "euler"},
     "scheduler", "unsupported_scheduler"),
    ("a LoRA, which video runs ignore", {"loras": [{"name": "ink"}]}, "loras",
     "unsupported_for_task"),
])
def test_a_video_the_model_or_service_cannot_make_is_refused(
    video_service: Service, case: str, fields: dict, field: str, code: str
) -> None:
    client = redis.Redis.from_url(video_service.redis_url)
    jobs_before, backlog_before = client.keys("latentd:job:*"), broker_backlog(client)
    response = video_service.client.post("/v1/jobs", json={**CLIP, **fields})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["field"], error["code"]) == (field, code), error
    assert client.keys("latentd:job:*") == jobs_before
    assert broker_backlog(client) == backlog_before


def test_models_and_the_schema_show_the_video_bounds(video_service: Service) -> None:
    models = video_service.client.get("/v1/models").json()
    entries = models["data"] if isinstance(models, dict) else models
    (video,) = [m for m in entries if m["name"] == VIDEO_MODEL]
    assert video["tasks"] == ["text-to-video"]
    assert (video["default_frames"], video["max_frames"], video["default_fps"]) == (
        4, MAX_FRAMES, 8)
    schema = video_service.client.get("/openapi.json").json()
    request = schema["components"]["schemas"]["GenerationRequest"]["properties"]
    frames = next(s for s in request["num_frames"]["anyOf"] if s.get("type") == "integer")
    assert (frames["minimum"], frames["maximum"]) == (1, 256)
    assert "mp4" in schema["components"]["schemas"]["OutputFormat"]["enum"]


def test_the_command_line_writes_a_clip_in_the_format_its_name_says(
    video_service: Service, tmp_path: Path
) -> None:
    env = {**os.environ, "LATENTD_URL": video_service.url}
    env.pop("LATENTD_API_KEY", None)
    result = subprocess.run(
        [*CLI_COMMAND, "generate", "a fox running", "--task", "text-to-video", "--model",
         VIDEO_MODEL, "--frames", "4", "--fps", "8", "--size", "32x32", "--steps", "2",
         "-o", "fox.gif", "-q"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "fox.gif"
    frames, fps, parameters = read_video((tmp_path / "fox.gif").read_bytes())
    assert frames == 4 and "a fox running" in parameters
    # GIF keeps a frame's time in hundredths of a second: 8 fps is written as 120 ms.
    assert fps == pytest.approx(8, rel=0.05)
