"""Reading output videos back in tests, as a player would: PyAV for MP4, Pillow for
animated WebP and GIF."""

from __future__ import annotations

import io

import av
import numpy as np
from PIL import Image


def read_video(data: bytes) -> tuple[int, float, str]:
    """(frames, fps, parameters) of a video file, read back as a player would."""
    if data[4:8] == b"ftyp":  # MP4
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            decoded = sum(1 for _ in container.decode(stream))
            assert stream.codec_context.name == "h264"
            return decoded, float(stream.average_rate), container.metadata["comment"]
    with Image.open(io.BytesIO(data)) as image:
        assert image.is_animated
        if image.format == "GIF":
            parameters = image.info["comment"].decode()
        else:
            parameters = image.getexif()[0x010E]
        durations = []
        for index in range(image.n_frames):
            image.seek(index)
            image.load()  # WebP reads a frame's duration with its pixels
            durations.append(image.info["duration"])
        assert len(set(durations)) == 1, durations
        return image.n_frames, 1000 / durations[0], parameters


def decoded_frames(data: bytes) -> np.ndarray:
    """Every frame of a video file as one (frames, height, width, 3) array."""
    if data[4:8] == b"ftyp":
        with av.open(io.BytesIO(data)) as container:
            return np.stack([frame.to_ndarray(format="rgb24")
                             for frame in container.decode(video=0)])
    with Image.open(io.BytesIO(data)) as image:
        frames = []
        for index in range(image.n_frames):
            image.seek(index)
            frames.append(np.asarray(image.convert("RGB")))
        return np.stack(frames)


def mean_difference(a: bytes, b: bytes) -> float:
    """Mean absolute difference of two videos' decoded pixels (0-255)."""
    return float(np.abs(decoded_frames(a).astype(np.int16) - decoded_frames(b)).mean())
