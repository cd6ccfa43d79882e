"""Bad or surprising video input (issue 23): phone clips with display-rotation metadata decode upright on every route,
as players show them (or are refused where no quarter turn or mirror does it); a frame list's `fps` must be a
positive number; the validation cache notices a changed video or frame; video problems read like image problems; a
video cut by `max_length` says "video tokens"."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, load_from_disk
from PIL import Image
from transformers.video_utils import load_video as transformers_load_video

from tests.conftest import assistant
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.data import video as video_module
from vlsft.data.validation import RowChecker, validate_rows
from vlsft.data.validation_report import skip_summary
from vlsft.data.video import load_video, probe_video
from vlsft.templates import training_template
from vlsft.testing.tiny_video import write_moving_shape, write_video, write_zero_frame_video

VIDEO = {"type": "video"}
BACKGROUND, RED, BLUE, GREEN, WHITE = (20, 20, 60), (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)
# Lossless carriers of each kind of rotation metadata, so decoded frames can be compared exactly.
DISPLAY_MATRIX = (".mov", ("png", "rgb24"))  # MP4/MOV `tkhd` matrix
ROTATE_TAG = (".mkv", ("ffv1", "bgr0"))  # Matroska keeps an older tool's `rotate` tag


def row(video, **extra):
    return {"messages": [{"role": "user", "content": [VIDEO, {"type": "text", "text": "Where?"}]},
                         assistant("Top left.")], "videos": [video], **extra}


def every_frame(metadata):
    return list(range(metadata.total_num_frames))


@pytest.fixture(scope="module")
def collator(tiny):
    return VisionChatCollator(tiny[1], training_template("qwen3_vl"))


def upright_frames(count: int = 4) -> list[np.ndarray]:
    """A portrait scene (48 wide, 64 tall): red top left, blue top right, green bottom left, a white dot moving."""
    frames = []
    for t in range(count):
        pixels = np.full((64, 48, 3), BACKGROUND, dtype=np.uint8)
        pixels[:16, :16], pixels[:16, -16:], pixels[-16:, :16] = RED, BLUE, GREEN
        pixels[30:34, 8 * t : 8 * t + 4] = WHITE
        frames.append(pixels)
    return frames


def phone_clip(path: Path, clockwise: int, hflip: bool = False, carrier=DISPLAY_MATRIX, count: int = 4, **kwargs):
    """What a phone writes for the upright scene: the frames as its sensor stores them, and metadata telling players
    to turn them `clockwise` degrees (then mirror them left to right with `hflip`) for display. The stored frames
    are the scene turned back, counter-clockwise (`np.rot90` turns counter-clockwise)."""
    stored = [np.rot90(np.fliplr(frame) if hflip else frame, k=clockwise // 90) for frame in upright_frames(count)]
    frames = [Image.fromarray(np.ascontiguousarray(frame)) for frame in stored]
    suffix, codec = carrier
    metadata = {"tags": {"rotate": str(clockwise)}} if carrier == ROTATE_TAG else {"display_rotation": -clockwise, "hflip": hflip}
    return write_video(path.with_suffix(suffix), frames, codec=codec if "options" not in kwargs else None,
                       **{**metadata, **kwargs})


# -- 7. orientation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "clockwise, hflip, carrier",
    [(90, False, DISPLAY_MATRIX), (180, False, DISPLAY_MATRIX), (270, False, DISPLAY_MATRIX), (0, True, DISPLAY_MATRIX),
     (90, True, DISPLAY_MATRIX), (90, False, ROTATE_TAG), (180, False, ROTATE_TAG), (270, False, ROTATE_TAG)],
)
def test_a_phone_clip_decodes_upright_on_every_route(tmp_path, clockwise, hflip, carrier):
    """Path, relative path, bytes, `{bytes}` and `{path}` dicts, and the sequential fallback decoder all give exactly
    the upright scene, and the metadata the processor reads has its displayed size."""
    path = phone_clip(tmp_path / "phone", clockwise, hflip, carrier)
    expected = np.stack(upright_frames())
    routes = [(str(path), None), (path.name, str(tmp_path)), (path.read_bytes(), None),
              ({"bytes": path.read_bytes(), "path": None}, None), ({"path": str(path)}, None)]
    for value, root in routes:
        video = load_video(value, root, every_frame, None)
        assert np.array_equal(video.frames, expected), type(value)
        assert (video.metadata.width, video.metadata.height) == (48, 64)
    probe = probe_video(str(path))
    found = video_module._decode_sequentially(str(path), probe, [0, 3])  # for streams without timestamps
    assert np.array_equal(np.stack([found[probe.frame_pts[i]] for i in (0, 3)]), expected[[0, 3]])


@pytest.mark.parametrize("clockwise", [90, 180, 270])
def test_a_seeking_h264_phone_clip_has_its_markers_in_the_upright_corners(tmp_path, clockwise):
    """Frames reached by seeking to keyframes (H.264, a keyframe every 4 frames) carry the display matrix too; they
    are exactly transformers' own PyAV frames (stored orientation) turned clockwise."""
    path = phone_clip(tmp_path / "phone", clockwise, carrier=(".mp4", None), count=12, options={"g": "4", "bf": "0"})
    video = load_video(str(path), None, lambda metadata: [1, 6, 11], None)
    assert video.frames.shape == (3, 64, 48, 3) and video.decoded_frames < 12
    stored, _ = transformers_load_video(str(path), backend="pyav", sample_indices_fn=lambda metadata, **_: np.array([1, 6, 11]))
    assert np.array_equal(video.frames, np.rot90(stored, k=-clockwise // 90, axes=(1, 2)))
    corners = {RED: (slice(2, 14), slice(2, 14)), BLUE: (slice(2, 14), slice(-14, -2)),
               GREEN: (slice(-14, -2), slice(2, 14)), BACKGROUND: (slice(-14, -2), slice(-14, -2))}
    for color, (rows_, columns) in corners.items():
        mean = video.frames[:, rows_, columns].reshape(-1, 3).mean(axis=0)
        assert np.abs(mean - np.array(color)).max() < 24, (color, mean)


def test_a_rotated_clip_collates_as_its_upright_twin(collator, tmp_path):
    """Through the collator (what training, validation and `vlsft inspect` decode with) the phone clip is the same
    batch as the same scene recorded upright: pixels, grid and tokens."""
    phone = phone_clip(tmp_path / "phone", 90)
    upright = write_video(tmp_path / "upright.mov", [Image.fromarray(f) for f in upright_frames()], codec=DISPLAY_MATRIX[1])
    ours, twin = collator([row(str(phone))]), collator([row(str(upright))])
    for key in ("input_ids", "pixel_values_videos", "video_grid_thw", "labels"):
        assert (ours[key] == twin[key]).all(), key
    assert validate_rows([row(str(phone))], collator).problems == []


def test_a_frame_list_of_phone_photos_is_upright(tmp_path):
    """The frame-list route: each frame, a path or a PIL image, gets its EXIF orientation like any photo."""
    paths = []
    for number, frame in enumerate(upright_frames()):
        stored = Image.fromarray(np.ascontiguousarray(np.rot90(frame)))  # stored turned back, counter-clockwise
        exif = stored.getexif()
        exif[0x0112] = 6  # EXIF: turn 90 degrees clockwise to view
        paths.append(tmp_path / f"{number}.png")
        stored.save(paths[-1], exif=exif)
    for frames in ([str(path) for path in paths], {"frames": [Image.open(path) for path in paths], "fps": 2.0}):
        assert np.array_equal(load_video(frames, None, every_frame, None).frames, np.stack(upright_frames()))


def test_an_unrotated_clip_is_decoded_untouched(tmp_path):
    """No display matrix and no tag: the frames are the stored ones (the processor-equality tests of test_video.py
    cover the rest)."""
    path = write_video(tmp_path / "plain.mov", [Image.fromarray(f) for f in upright_frames()], codec=DISPLAY_MATRIX[1])
    assert np.array_equal(load_video(str(path), None, every_frame, None).frames, np.stack(upright_frames()))


def test_orientation_metadata_no_quarter_turn_expresses_is_refused(collator, tmp_path):
    frames = [Image.fromarray(f) for f in upright_frames()]
    suffix, codec = DISPLAY_MATRIX
    tilted = write_video(tmp_path / "tilted.mov", frames, codec=codec, display_rotation=45)
    odd_tag = write_video(tmp_path / "odd.mkv", frames, codec=ROTATE_TAG[1], tags={"rotate": "45"})
    word_tag = write_video(tmp_path / "word.mkv", frames, codec=ROTATE_TAG[1], tags={"rotate": "left"})
    # 90 degrees counter-clockwise in the matrix, 90 clockwise in the tag: which one is right cannot be known.
    disagree = write_video(tmp_path / "disagree.mkv", frames, codec=ROTATE_TAG[1], display_rotation=90, tags={"rotate": "90"})
    got = [str(problem) for problem in validate_rows([row(str(p)) for p in (tilted, odd_tag, word_tag, disagree)], collator).problems]
    assert got[0].startswith("row 0: video 0 has a display matrix [0.7071, ") and "not a quarter turn or a mirror" in got[0]
    assert got[1].startswith("row 1: video 0 has a `rotate` tag of '45', not a multiple of 90 degrees")
    assert got[2].startswith("row 2: video 0 has a `rotate` tag of 'left', not a multiple of 90 degrees")
    assert got[3].startswith("row 3: video 0 has a display matrix (270 degrees clockwise) and a `rotate` tag (90 "
                             "degrees clockwise) that disagree")
    assert all("re-encode it upright first" in reason for reason in got)
    with pytest.raises(RowError, match="batch row 0: video 0 has a display matrix"):
        collator([row(str(tilted))])
    # Matrix and tag agreeing (as older FFmpeg wrote both) is no problem.
    agree = write_video(tmp_path / "agree.mkv", frames, codec=ROTATE_TAG[1], display_rotation=90, tags={"rotate": "270"})
    assert validate_rows([row(str(agree))], collator).problems == []


# -- 8. a frame list's fps ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [0, 0.0, -2, -0.5, math.nan, math.inf, -math.inf, True, "2", [2.0]])
def test_a_frame_list_fps_that_is_not_a_positive_number_is_refused(collator, fps):
    frames = [Image.fromarray(f) for f in upright_frames()]
    bad = row({"frames": frames, "fps": fps})
    (problem,) = validate_rows([bad], collator).problems
    assert str(problem).startswith(f"row 0: video 0 has fps {fps!r} ({type(fps).__name__}); a frame list's `fps` "
                                   "must be a number of frames per second above 0")
    with pytest.raises(RowError, match=r"batch row 0: video 0 has fps"):
        collator([bad])


def test_a_frame_list_fps_given_or_left_out_is_used(collator):
    frames = [Image.fromarray(f) for f in upright_frames()]
    for fps, expected in ((np.float32(4.0), 4.0), (None, collator.video_processor.fps), (1, 1.0)):
        video = collator.load_videos([{"frames": frames, "fps": fps}])[0]
        assert video.metadata.fps == expected


# -- 13. the validation cache covers videos ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "frame list", "inline"])
def test_the_validation_cache_notices_a_changed_video(collator, tmp_path, kind):
    clips = tmp_path / "clips"
    clips.mkdir()
    rows = []
    for n in range(4):
        clip = write_moving_shape(clips / f"{n}.mp4", num_frames=4)
        frames = []
        for number, frame in enumerate(upright_frames()):
            frames.append(str(clips / f"{n}-{number}.png"))
            Image.fromarray(frame).save(frames[-1])
        if kind == "inline":
            rows.append({"messages": [{"role": "user", "content": [{"type": "video", "video": str(clip)}]}, assistant("x")]})
        else:
            rows.append(row(str(clip) if kind == "file" else {"frames": frames, "fps": 2.0}))
    Dataset.from_list(rows).save_to_disk(tmp_path / "data")
    assert validate_rows(load_from_disk(tmp_path / "data"), collator).problems == []
    assert validate_rows(load_from_disk(tmp_path / "data"), collator).problems == []  # from the cache
    changed = clips / ("2-1.png" if kind == "frame list" else "2.mp4")
    changed.write_bytes(b"")  # emptied after the validated run
    problems = validate_rows(load_from_disk(tmp_path / "data"), collator).problems
    expected = "video 0 frame 1: image cannot be decoded" if kind == "frame list" else "video 0 cannot be decoded"
    assert [(p.index, p.reason.split(" (")[0]) for p in problems] == [(2, expected)]


# -- 21. messages that say what is wrong -------------------------------------------------------------------------


def audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return path


def test_video_problems_read_like_image_problems(collator, tmp_path):
    clip = write_moving_shape(tmp_path / "clip.mp4", num_frames=4)
    frames = [Image.fromarray(f) for f in upright_frames()]
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    url = "https://example.com/clip.mp4"
    cases = [
        ({**row(None), "videos": str(clip)}, "`videos` must be a list, got str '/"),
        ({**row(None), "videos": {"frames": frames, "fps": 2.0}}, "`videos` must be a list, got dict {'frames': ["),
        (row(str(tmp_path)), f"video 0 path {tmp_path} is a directory; a video must be a regular file"),
        (row(str(fifo)), f"video 0 path {fifo} is a FIFO; a video must be a regular file"),
        (row(url), f"video 0 {url} is a remote video, and vlsft does not fetch remote videos: download it and pass "
                   "its local path (or its bytes as `{'bytes': ...}`)"),
        (row({"path": url}), f"video 0 {url} is a remote video"),
        (row(str(write_zero_frame_video(tmp_path / "zero.mp4"))), "video 0 has no frames"),
        (row(str(write_zero_frame_video(tmp_path / "zero.mkv"))), "video 0 has no frames"),
        (row(str(audio_only(tmp_path / "sound.wav"))), "video 0 has no video stream (only audio)"),
        (row({"frames": frames, "fps": 2.0, "rotation": 90}), "video 0 has key(s) rotation that vlsft does not read"),
        (row({"path": str(clip), "fps": 2.0}), "video 0 has key(s) fps that vlsft does not read; a video file dict"),
        (row({"frames": "clips/", "fps": 2.0}), "video 0 has `frames` of type str; `frames` must be a list of images"),
    ]
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("validation blocked on a FIFO"))
    signal.alarm(60)
    try:
        got = [verdict.reason for verdict in RowChecker(collator).check([case for case, _ in cases])]
        for case, expected in cases:
            with pytest.raises(RowError, match="batch row 0: ") as error:
                collator([case])
            assert error.value.reason.startswith(expected)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    for reason, (_, expected) in zip(got, cases):
        assert reason.startswith(expected), reason
    assert "not found" not in " ".join(got)
    summary = skip_summary("train", validate_rows([case for case, _ in cases[:2]], collator))
    assert "2 videos not a list" in summary


# -- 25. a video cut by max_length -------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False])
def test_a_video_cut_by_max_length_says_video_tokens(tiny, tmp_path, fast):
    """Both ways validation counts tokens (from sizes, or by collating) name the video, and so does the collator."""
    clip = row(str(write_moving_shape(tmp_path / "clip.mp4", num_frames=4)))
    full = VisionChatCollator(tiny[1], training_template("qwen3_vl"))([clip])
    video_start = int((full["input_ids"][0] == tiny[1].tokenizer.convert_tokens_to_ids("<|video_pad|>")).nonzero().min())
    cut = VisionChatCollator(tiny[1], training_template("qwen3_vl"), max_length=video_start + 1)
    (verdict,) = RowChecker(cut, fast=fast).check([clip])
    assert verdict.reason.startswith(f"max_length={video_start + 1} cuts video tokens (row is ")
    assert "video tokens end at" in verdict.reason and "image" not in verdict.reason
    with pytest.raises(RowError, match=rf"max_length={video_start + 1} cuts video tokens \(row has"):
        cut([clip])
    assert "1 video tokens truncated" in skip_summary("train", validate_rows([clip], cut))
