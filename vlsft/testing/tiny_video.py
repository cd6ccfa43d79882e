"""Tiny synthetic videos for tests, benchmarks and demos: coloured shapes moving over a plain background, written
with PyAV into mp4 (H.264), webm (VP8) or gif, or returned as a list of PIL frames."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# container suffix -> (codec, pixel format the codec encodes)
CODECS = {".mp4": ("libx264", "yuv420p"), ".webm": ("libvpx", "yuv420p"), ".gif": ("gif", "rgb8"),
          ".mkv": ("libx264", "yuv420p"), ".avi": ("mpeg4", "yuv420p"), ".mov": ("libx264", "yuv420p")}
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


def moving_shape_frames(
    num_frames: int = 8, size: tuple[int, int] = (64, 48), direction: str = "right", color=(255, 0, 0), shape="square"
) -> list[Image.Image]:
    """`num_frames` RGB frames (`size` is width, height) of a shape crossing the frame in `direction`."""
    width, height = size
    side = max(4, min(width, height) // 4)
    dx, dy = DIRECTIONS[direction]
    frames = []
    for t in range(num_frames):
        progress = t / max(num_frames - 1, 1)
        x = (width - side) * (progress if dx > 0 else 1 - progress) if dx else (width - side) / 2
        y = (height - side) * (progress if dy > 0 else 1 - progress) if dy else (height - side) / 2
        frame = Image.new("RGB", size, (20, 20, 60))
        draw = ImageDraw.Draw(frame)
        box = (x, y, x + side, y + side)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=color)
        frames.append(frame)
    return frames


def write_video(
    path: str | os.PathLike,
    frames: list[Image.Image],
    fps: int = 4,
    options: dict | None = None,
    codec: tuple[str, str] | None = None,
    display_rotation: float | None = None,
    hflip: bool = False,
    tags: dict[str, str] | None = None,
) -> Path:
    """Encode `frames` into `path`; the container and codec follow the suffix (see `CODECS`) unless `codec` names
    another (codec, pixel format), e.g. the lossless ("png", "rgb24") in .mov or ("ffv1", "bgr0") in .mkv. H.264 gets
    a keyframe every 4 frames and no B-frames unless `options` (FFmpeg encoder options) say otherwise.

    A phone's clip: `display_rotation` writes a display matrix that turns the stored frames counter-clockwise by that
    many degrees for display (PyAV's convention), then mirrors them left to right with `hflip`; `tags` are stream
    tags, e.g. `{"rotate": "90"}` (clockwise degrees), as older tools wrote them (Matroska keeps them)."""
    import av

    path = Path(path)
    codec, pixel_format = codec or CODECS[path.suffix]
    width, height = frames[0].size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        if display_rotation is not None or hflip:
            stream.set_display_rotation(display_rotation or 0, hflip=hflip)
        stream.metadata.update(tags or {})
        if codec == "libx264":
            stream.options = options or {"g": "4", "bf": "0"}  # a keyframe every 4 frames: the decoder really seeks
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_moving_shape(
    path: str | os.PathLike, num_frames: int = 8, fps: int = 4, size=(64, 48), direction="right", **kwargs
) -> Path:
    return write_video(path, moving_shape_frames(num_frames, size, direction, **kwargs), fps=fps)


def write_zero_frame_video(path: str | os.PathLike, size=(64, 48)) -> Path:
    """A well-formed container (mp4, mkv...) with a video stream declared and no frame in it."""
    import av

    codec, pixel_format = CODECS[Path(path).suffix]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=4)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], pixel_format
        container.start_encoding()
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)
