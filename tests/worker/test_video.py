"""worker.video: tiny random-weight AnimateDiff and CogVideoX pipelines saved to folders,
loaded as served models, run by the engine, and written as MP4 / animated WebP / GIF with
a poster."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.model_registry import ModelSpec, family_defaults
from shared.schemas import OutputFormat, Task
from shared.settings import Settings
from shared.storage import LocalStorage, image_key, poster_key
from tests.factories import make_plan
from tests.videos import read_video

VIDEO_MODEL = "tiny-video"
COGVIDEOX = "tiny-cogvideox"


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.video import build_tiny_animatediff_pipeline

    folder = tmp_path_factory.mktemp("tiny-animatediff")
    build_tiny_animatediff_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def video_spec(video_folder: Path) -> ModelSpec:
    return ModelSpec(name=VIDEO_MODEL, source=str(video_folder),
                     **{**family_defaults(str(video_folder)), "default_width": 64,
                        "default_height": 64, "min_width": 32, "min_height": 32})


@pytest.fixture(scope="module")
def cogvideox_spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    from worker.video import build_tiny_cogvideox_pipeline

    folder = tmp_path_factory.mktemp("tiny-cogvideox")
    build_tiny_cogvideox_pipeline().save_pretrained(folder)
    return ModelSpec(name=COGVIDEOX, source=str(folder),
                     **{**family_defaults(str(folder)), "default_width": 32,
                        "default_height": 32, "default_frames": 9})


@pytest.fixture(scope="module")
def video_engine(video_spec: ModelSpec, cogvideox_spec: ModelSpec):
    from worker.engine import GenerationEngine
    from worker.pipelines import load_pipeline

    settings = Settings(torch_threads=1)
    return GenerationEngine({spec.name: load_pipeline(spec, settings)
                             for spec in (video_spec, cogvideox_spec)})


def video_plan(**overrides: object):
    fields = {"task": "text-to-video", "model": VIDEO_MODEL, "steps": 2, "num_frames": 4,
              "fps": 10, "output_format": "mp4", "width": 32, "height": 32}
    return make_plan(**{**fields, **overrides})


def test_the_folder_loads_as_an_animatediff_video_model(video_engine, video_spec) -> None:
    model = video_engine.models[VIDEO_MODEL]
    assert video_spec.tasks == [Task.TEXT_TO_VIDEO]
    assert type(model.pipeline_for(Task.TEXT_TO_VIDEO)).__name__ == "AnimateDiffPipeline"
    assert model.pipeline_for(Task.TEXT_TO_IMAGE) is None


def test_a_cogvideox_folder_is_a_native_video_model(video_engine, cogvideox_spec) -> None:
    spec = cogvideox_spec
    assert spec.tasks == [Task.TEXT_TO_VIDEO]
    assert (spec.size_multiple, spec.frame_step, spec.schedulers) == (16, 8, ["ddim", "dpmpp_2m"])
    pipe = video_engine.models[COGVIDEOX].pipeline_for(Task.TEXT_TO_VIDEO)
    assert type(pipe).__name__ == "CogVideoXPipeline"


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp_2m"])
def test_cogvideox_makes_its_frames_with_its_own_samplers(video_engine, scheduler: str) -> None:
    steps: list[tuple[int, int]] = []
    plan = video_plan(model=COGVIDEOX, num_frames=9, scheduler=scheduler, seeds=[3, 4],
                      num_images=2)
    videos = video_engine.generate(plan, on_step=lambda s, t: steps.append((s, t)) and False)
    assert [len(v.frames or []) for v in videos] == [9, 9]
    assert videos[0].frames[0].size == (32, 32) and steps[-1] == (4, 4)
    pipe = video_engine.models[COGVIDEOX].pipeline_for(Task.TEXT_TO_VIDEO)
    assert type(pipe.scheduler).__name__.startswith("CogVideoX")
    again = video_engine.generate(video_plan(model=COGVIDEOX, num_frames=9,
                                             scheduler=scheduler, seeds=[4]))
    assert _pixels(again[0].frames) == _pixels(videos[1].frames)


def test_a_video_model_registered_for_image_tasks_fails_to_load(video_folder: Path) -> None:
    from worker.pipelines import ModelLoadError, load_pipeline

    spec = ModelSpec(name="x", source=str(video_folder),
                     tasks=[Task.TEXT_TO_VIDEO, Task.TEXT_TO_IMAGE])
    with pytest.raises(ModelLoadError, match="text-to-image"):
        load_pipeline(spec, Settings(torch_threads=1))


def test_each_video_has_the_planned_frames_and_depends_on_its_seed_alone(video_engine) -> None:
    steps: list[tuple[int, int]] = []
    two = video_engine.generate(video_plan(num_images=2, seeds=[5, 6]),
                                on_step=lambda s, t: steps.append((s, t)) and False)
    assert [v.seed for v in two] == [5, 6]
    assert all(v.frames is not None and len(v.frames) == 4 for v in two)
    assert two[0].frames[0].size == (32, 32) and two[0].image is two[0].frames[0]
    # Progress counts the steps of both videos.
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    again = video_engine.generate(video_plan(seeds=[6]))
    assert _pixels(again[0].frames) == _pixels(two[1].frames)
    assert _pixels(two[0].frames) != _pixels(two[1].frames)


def test_cancel_stops_the_run_within_a_step(video_engine) -> None:
    from worker.engine import GenerationCanceled

    seen: list[int] = []

    def stop_after_first(step: int, total: int) -> bool:
        seen.append(step)
        return True

    with pytest.raises(GenerationCanceled) as caught:
        video_engine.generate(video_plan(num_images=2, seeds=[1, 2], steps=3),
                              on_step=stop_after_first)
    # Stopped in the first video: no step of the second one ran.
    assert (caught.value.step, caught.value.total_steps) == (1, 6) and seen == [1]


@pytest.mark.parametrize("fmt", [OutputFormat.MP4, OutputFormat.WEBP, OutputFormat.GIF])
def test_a_stored_video_opens_with_its_frames_fps_and_parameters(
    video_engine, tmp_path: Path, fmt: OutputFormat
) -> None:
    from worker.video import store_video

    plan = video_plan(output_format=fmt.value, seeds=[3])
    result = video_engine.generate(plan)[0]
    storage = LocalStorage(tmp_path)
    record = store_video(storage, "job_1", 0, plan, result)
    assert (record.frames, record.fps, record.format, record.seed) == (4, 10, fmt, 3)
    data = storage.get(image_key("job_1", 0, fmt.value))
    frames, fps, parameters = read_video(data)
    assert frames == 4 and fps == pytest.approx(10)
    assert "a cat" in parameters and "Seed: 3" in parameters and "Frames: 4, FPS: 10" in parameters
    with Image.open(io.BytesIO(storage.get(poster_key("job_1", 0)))) as poster:
        assert poster.format == "PNG" and poster.size == (32, 32)
        assert "Seed: 3" in poster.info["parameters"]
    # What a player shows is what was generated: lossy, so close in brightness (the
    # colour of these noisy random frames is averaged over 2×2 pixels in MP4, and
    # reduced to a palette in GIF).
    shown = np.asarray(decode_first_frame(data).convert("L"), dtype=np.int16)
    made = np.asarray(result.image.convert("L"), dtype=np.int16)
    assert np.abs(shown - made).mean() < 6
    # Same frames, same bytes: a re-run of the job rewrites identical files.
    assert store_video(storage, "job_1", 0, plan, result) == record
    assert storage.get(image_key("job_1", 0, fmt.value)) == data


def decode_first_frame(data: bytes) -> Image.Image:
    if data[4:8] == b"ftyp":
        import av

        with av.open(io.BytesIO(data)) as container:
            return next(container.decode(video=0)).to_image()
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _pixels(frames) -> list[bytes]:
    return [np.asarray(frame).tobytes() for frame in frames]
