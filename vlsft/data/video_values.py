"""What a video value in a row may be (see `vlsft.data.video`), checked before anything is decoded: a local regular
file (path, bytes, or a `datasets`-style `{bytes, path}` dict) or a frame list (a list, or `{frames, fps}`), with no
key or value that vlsft would otherwise ignore."""

from __future__ import annotations

import io
import math
import numbers
import os
import stat
from typing import Any

from PIL import Image

from vlsft.data.rows import ImageLoadError, load_image, refuse_remote, resolve_path

# The keys a video dict may hold: a file (`datasets` style) or a frame list. Any other key would be ignored, so it is
# refused (None values are Arrow's union of keys across rows).
FILE_KEYS = ("bytes", "path")
FRAME_LIST_KEYS = ("frames", "fps")


class VideoLoadError(ValueError):
    """A video could not be read, decoded or sampled. The message reads on from "video N " (e.g. "not found: x.mp4",
    "cannot be decoded (...)")."""


def is_frame_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or (isinstance(value, dict) and value.get("frames") is not None)


def video_source(value: Any, root: str | None):
    """What `av.open` takes for a video value: a path (checked to exist) or an in-memory file."""
    if isinstance(value, (bytes, bytearray)):
        return io.BytesIO(value)
    if isinstance(value, dict):
        _check_keys(value, FILE_KEYS, "a video file dict is `{bytes: ..., path: ...}`")
        if value.get("bytes"):
            return io.BytesIO(value["bytes"])
        if value.get("path"):
            value = value["path"]
    if isinstance(value, (str, os.PathLike)):
        return _video_file(value, root)
    raise VideoLoadError(f"is an unsupported value of type {type(value).__name__}")


def _video_file(value: str | os.PathLike, root: str | None) -> str:
    """A local regular file's path, or why the value is not one (the same rules as an image path's)."""
    text = os.fspath(value)
    refuse_remote(text, "video", VideoLoadError)
    path = resolve_path(text, root)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise VideoLoadError(f"not found: {path}") from None
    # FFmpeg on a FIFO or a device blocks or reads forever: only regular files (after symlinks) are videos.
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise VideoLoadError(f"path {path} is {kind}; a video must be a regular file")
    return path


def _check_keys(value: dict, known: tuple[str, ...], shape: str) -> None:
    unknown = sorted(str(key) for key, item in value.items() if key not in known and item is not None)
    if unknown:
        raise VideoLoadError(f"has key(s) {', '.join(unknown)} that vlsft does not read; {shape}: remove them")


def frame_list(value: Any) -> tuple[list[Any], float | None]:
    """A frame list's frames and its own frame rate (None: not given)."""
    if isinstance(value, dict):
        _check_keys(value, FRAME_LIST_KEYS, "a frame list is `{frames: [...], fps: N}`")
        frames, fps = value["frames"], _frame_rate(value.get("fps"))
    else:
        frames, fps = value, None
    if isinstance(frames, (str, bytes)) or not isinstance(frames, (list, tuple)):
        raise VideoLoadError(f"has `frames` of type {type(frames).__name__}; `frames` must be a list of images")
    if not frames:
        raise VideoLoadError("is an empty frame list")
    return list(frames), fps


def _frame_rate(fps: Any) -> float | None:
    """A frame list's `fps`: None (the processor's rate) or a finite number above 0. Qwen3-VL's timestamps and
    Qwen2.5-VL's `second_per_grid_ts` divide by it, so 0 or less would train negative or infinite times."""
    if fps is None:
        return None
    if isinstance(fps, numbers.Real) and not isinstance(fps, bool) and math.isfinite(fps) and fps > 0:
        return float(fps)
    raise VideoLoadError(
        f"has fps {fps!r} ({type(fps).__name__}); a frame list's `fps` must be a number of frames per second above "
        "0 (e.g. `fps: 2.0`), or left out for the processor's sampling rate"
    )


def load_frame(frame: Any, root: str | None, index: int) -> Image.Image:
    try:
        return load_image(frame, root)
    except ImageLoadError as error:
        raise VideoLoadError(f"frame {index}: {error}") from error
