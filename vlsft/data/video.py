"""Videos in conversation rows: what a video value may be (checked in `vlsft.data.video_values`), and decoding only
the frames the processor samples.

A video is
- a file path (absolute, or relative to a video root) to an mp4, webm, mkv, avi, mov or gif file;
- raw bytes, or a `datasets`-style dict with `bytes` and/or `path`;
- a list of frames (PIL images or image paths), or a dict `{"frames": [...], "fps": 2.0}`.

Files are decoded with PyAV (FFmpeg bundled in its wheels, the default backend of transformers' `load_video`). The
container is read twice: once without decoding (its packets' timestamps give the frame count and the keyframes), then
the decoder seeks to the keyframe before each sampled frame and decodes from there up to that frame, so a long video
costs about as many decoded frames as are sampled, not as many as it has. Frame `i` is the `i`-th frame in
presentation order, as `transformers.video_utils.read_video_pyav` counts it. Frames are turned upright by the
file's display matrix or `rotate` tag (`vlsft.data.video_orientation`), as players show them.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers.video_utils import VideoMetadata

from vlsft.data.video_values import VideoLoadError, frame_list, is_frame_list, load_frame, video_source
from vlsft.data.video_orientation import Turn, UnsupportedOrientation, frame_turn, rotate_tag_turn


@dataclass
class VideoProbe:
    """What a video file says about itself without decoding a frame: its frames' timestamps (presentation order),
    the timestamps of its keyframes, its frame rate, its stored size (before turning upright) and the turn its
    `rotate` tag asks for (None without one)."""

    frame_pts: list[int]
    keyframe_pts: list[int]
    fps: float | None
    width: int
    height: int
    rotate_tag: Turn | None = None

    @property
    def total_frames(self) -> int:
        return len(self.frame_pts)


@dataclass
class LoadedVideo:
    """Sampled frames `[T, H, W, 3]` (uint8 RGB) and the metadata the video processor reads (`fps`,
    `total_num_frames`, `frames_indices`: Qwen3-VL's timestamps and Qwen2.5-VL's `second_per_grid_ts` come from it)."""

    frames: np.ndarray
    metadata: VideoMetadata
    decoded_frames: int = 0  # frames the decoder produced to reach them (a file's), which seeking keeps low


def load_video(
    value: Any, root: str | None, sample_indices: Callable[[VideoMetadata], Sequence[int]], default_fps: float | None
) -> LoadedVideo:
    """Decode the frames `sample_indices(metadata)` picks from a video value (see the module docstring).

    `default_fps` is the frame rate assumed for a frame list that gives none: the frames are taken as already sampled
    at the rate the processor samples at, so by default all of them are kept.
    """
    if is_frame_list(value):
        frames, fps = frame_list(value)
        metadata = VideoMetadata(total_num_frames=len(frames), fps=fps if fps is not None else default_fps)
        indices = _indices(sample_indices, metadata)
        pictures = [np.asarray(load_frame(frames[i], root, i)) for i in indices]
        if len({picture.shape for picture in pictures}) > 1:
            sizes = sorted({picture.shape[:2] for picture in pictures})
            raise VideoLoadError(f"has frames of different sizes ({sizes}); resize them alike")
        return _loaded(np.stack(pictures), metadata, indices)
    source = video_source(value, root)
    probe = probe_video(value, root)
    metadata = VideoMetadata(
        total_num_frames=probe.total_frames,
        fps=probe.fps,
        width=probe.width,
        height=probe.height,
        duration=probe.total_frames / probe.fps if probe.fps else None,
        video_backend="pyav",
    )
    indices = _indices(sample_indices, metadata)
    try:
        frames, decoded = _decode_frames(source, probe, indices)
    except VideoLoadError:
        raise
    except UnsupportedOrientation as error:
        raise VideoLoadError(str(error)) from error
    except Exception as error:  # FFmpeg errors: truncated or corrupt streams
        raise VideoLoadError(f"cannot be decoded ({type(error).__name__}: {error})") from error
    metadata.height, metadata.width = frames.shape[1:3]  # as displayed: a quarter turn swaps them
    video = _loaded(frames, metadata, indices)
    video.decoded_frames = decoded
    return video


def probe_video(value: Any, root: str | None = None) -> VideoProbe:
    """Open a video file (path, bytes or dict) and read its packets without decoding them."""
    import av

    source = video_source(value, root)
    try:
        with av.open(source) as container:
            if not container.streams.video:
                others = sorted({stream.type for stream in container.streams})
                raise VideoLoadError(
                    f"has no video stream (only {', '.join(others)})" if others else "has no frames (an empty container)"
                )
            stream = container.streams.video[0]
            rotate_tag = rotate_tag_turn(dict(stream.metadata))
            frame_pts, keyframe_pts = [], []
            for packet in container.demux(stream):
                if packet.pts is None or packet.size == 0:  # the flush packet at the end
                    continue
                frame_pts.append(packet.pts)
                if packet.is_keyframe:
                    keyframe_pts.append(packet.pts)
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            width, height = stream.codec_context.width, stream.codec_context.height
    except VideoLoadError:
        raise
    except UnsupportedOrientation as error:
        raise VideoLoadError(str(error)) from error
    except av.error.EOFError as error:  # Matroska with no frame ends before its first cluster
        raise VideoLoadError("has no frames (the file ends before its first frame: empty or cut short)") from error
    except Exception as error:  # av.error.InvalidDataError and friends: not a video FFmpeg can read
        raise VideoLoadError(f"cannot be decoded ({type(error).__name__}: {error})") from error
    if not frame_pts:
        raise VideoLoadError("has no frames")
    _rewind(source)
    return VideoProbe(sorted(frame_pts), sorted(keyframe_pts), fps, width, height, rotate_tag)


# -- internals -----------------------------------------------------------------------------------------------------


def _rewind(source) -> None:
    if isinstance(source, io.BytesIO):
        source.seek(0)


def _indices(sample_indices, metadata: VideoMetadata) -> list[int]:
    try:
        indices = [int(i) for i in sample_indices(metadata)]
    except ValueError as error:  # the processor's sampler refuses (e.g. more frames asked than there are)
        raise VideoLoadError(f"frames cannot be sampled: {error}") from error
    if not indices:
        raise VideoLoadError(f"has no frame sampled out of {metadata.total_num_frames}")
    return indices


def _loaded(frames: np.ndarray, metadata: VideoMetadata, indices: list[int]) -> LoadedVideo:
    metadata.frames_indices = indices
    return LoadedVideo(frames, metadata)


def _decode_frames(source, probe: VideoProbe, indices: list[int]) -> tuple[np.ndarray, int]:
    """The frames at `indices` (presentation order), seeking to the keyframe before each one that is not reached by
    decoding on from the previous one; and how many frames were decoded."""
    import av

    wanted = sorted({probe.frame_pts[i] for i in indices})
    wanted_set = set(wanted)
    found: dict[int, np.ndarray] = {}
    decoded = 0
    with av.open(source) as container:
        stream = container.streams.video[0]
        decoder, position = None, None  # position: pts of the last decoded frame
        for target in wanted:
            if target in found:
                continue
            keyframe = probe.keyframe_pts[max(bisect.bisect_right(probe.keyframe_pts, target) - 1, 0)]
            # Seek unless the current position already lies between the target's keyframe and the target.
            if decoder is None or position is None or position < keyframe or position >= target:
                container.seek(keyframe, stream=stream, backward=True, any_frame=False)
                decoder = container.decode(stream)
            for frame in decoder:
                decoded += 1
                if frame.pts is None:
                    break  # no timestamps to seek by: decode sequentially below
                position = frame.pts
                if position in wanted_set and position not in found:
                    found[position] = _upright(frame, probe)
                if position >= target:
                    break
            if target not in found:
                break
    if len(found) < len(wanted):
        _rewind(source)
        found = _decode_sequentially(source, probe, indices)
        decoded += max(indices) + 1
    return np.stack([found[probe.frame_pts[i]] for i in indices]), decoded


def _upright(frame, probe: VideoProbe) -> np.ndarray:
    """A decoded frame as RGB pixels turned as players show it (its display matrix, else the stream's `rotate` tag)."""
    matrix = frame.side_data.get("DISPLAYMATRIX")
    turn = frame_turn(bytes(matrix) if matrix is not None else None, probe.rotate_tag)
    return turn.rgb(frame)


def _decode_sequentially(source, probe: VideoProbe, indices: list[int]) -> dict[int, np.ndarray]:
    """Fallback for streams whose frames carry no usable timestamps: decode from the start, counting frames."""
    import av

    wanted, last = set(indices), max(indices)
    found = {}
    with av.open(source) as container:
        for number, frame in enumerate(container.decode(video=0)):
            if number in wanted:
                found[probe.frame_pts[number]] = _upright(frame, probe)
            if number >= last:
                break
    if len(found) < len(wanted):
        raise VideoLoadError(f"decodes to fewer frames than its {probe.total_frames} packets")
    return found
