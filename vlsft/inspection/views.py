"""What `vlsft inspect` shows of a row: the records (`RowView`, cut into `Segment`s, with its `VideoView`s) and their
text form, supervised tokens coloured on a terminal or wrapped in `[[ ]]` elsewhere, context-only assistant tokens
dimmed or in `(( ))`, each supervised run's weight in rows with per-turn weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUPERVISED_OPEN, SUPERVISED_CLOSE = "[[", "]]"
# Assistant-turn tokens that do not train (weight 0: a context-only turn, `train_on_turns="last"`, ...).
CONTEXT_OPEN, CONTEXT_CLOSE = "((", "))"
_ANSI_SUPERVISED, _ANSI_IMAGE, _ANSI_RESET = "\x1b[30;43m", "\x1b[1;36m", "\x1b[0m"
_ANSI_CONTEXT, _ANSI_WEIGHT = "\x1b[2;3;9m", "\x1b[1;35m"  # dim italic struck-through; bold magenta


@dataclass
class Segment:
    """A run of consecutive tokens that are all supervised or all not, or a run of image tokens (never supervised):
    `is_image`, with `image` its image's number where each image is one run (Qwen, Gemma 3, LLaVA-NeXT), else None
    (Idefics3 and SmolVLM split an image into tiles, each its own run)."""

    text: str
    supervised: bool
    image: int | None = None
    num_tokens: int = 0
    is_image: bool = False
    weight: float = 1.0  # of a supervised run
    context: bool = False  # assistant-turn tokens that do not train (weight 0)
    video: int | None = None  # for a run of video tokens (one per temporal group in Qwen3-VL): its video's number


@dataclass
class VideoView:
    """One video as it trains: its sampled frames (PIL, for the HTML strip), their timestamps in seconds, the frame
    size, its video tokens and all the tokens it expands to (with Qwen3-VL's timestamps and vision markers)."""

    frames: list[Any]
    timestamps: list[float]
    size: tuple[int, int]  # (width, height) as decoded
    video_tokens: int
    total_tokens: int


@dataclass
class RowView:
    """One row as the trainer sees it. `num_tokens` is after truncation, `full_length` before it."""

    index: int
    segments: list[Segment] = field(default_factory=list)
    num_tokens: int = 0
    num_supervised_tokens: int = 0
    image_tokens: list[int] = field(default_factory=list)  # per image, where each image is one run of tokens
    num_image_tokens: int = 0
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) as loaded
    images: list[Any] = field(default_factory=list)  # the decoded PIL images, for the HTML view
    full_length: int = 0
    problem: str | None = None  # why the row cannot be trained on, if it cannot
    weighted: bool = False  # some assistant token weighs other than 1 (then weights are shown)
    supervised_weight: float = 0.0  # summed weight of the supervised tokens (the loss's share of this row)
    videos: list[VideoView] = field(default_factory=list)

    def text(self, color: bool = False) -> str:
        return render_text(self, color=color)



def summary(view: RowView) -> str:
    images = ", ".join(
        f"image {number} {width}x{height} -> {tokens} tokens"
        for number, ((width, height), tokens) in enumerate(zip(view.image_sizes, view.image_tokens))
    )
    parts = [f"{view.num_tokens} tokens", f"{view.num_supervised_tokens} supervised"]
    if view.weighted:
        parts[-1] += f" (summed weight {view.supervised_weight:g})"
    if view.full_length > view.num_tokens:
        parts[0] += f" (truncated from {view.full_length})"
    parts.append(f"{view.num_image_tokens} image tokens" + (f" ({images})" if images else ""))
    if view.videos:
        videos = ", ".join(
            f"video {number} {len(video.frames)} frames {video.size[0]}x{video.size[1]} "
            f"at {video.timestamps[0]:.1f}-{video.timestamps[-1]:.1f} s -> {video.video_tokens} tokens "
            f"({video.total_tokens} with timestamps and markers)"
            for number, video in enumerate(view.videos)
        )
        parts.append(f"{sum(video.video_tokens for video in view.videos)} video tokens ({videos})")
    return ", ".join(parts)


def render_text(view: RowView, color: bool = False) -> str:
    """A row as text: supervised tokens coloured (`color=True`) or wrapped in `[[ ]]`."""
    head = f"=== row {view.index}: "
    if view.problem and not view.segments:
        return head + f"cannot be trained on: {view.problem}\n"
    lines = [head + summary(view)]
    if view.problem:
        lines.append(f"!!! {view.problem}")
    out = []
    for segment in view.segments:
        if segment.video is not None:
            label = f"[video {segment.video}: {segment.text}]"
            out.append(f"{_ANSI_IMAGE}{label}{_ANSI_RESET}" if color else label)
        elif segment.is_image:
            label = f"[image {segment.image}: {segment.text}]" if segment.image is not None else f"[{segment.text}]"
            out.append(f"{_ANSI_IMAGE}{label}{_ANSI_RESET}" if color else label)
        elif segment.supervised and color:
            # Colour each line on its own, so the background does not run to the edge of the terminal.
            text, newlines = _split_trailing_newlines(segment.text)
            out.append("\n".join(f"{_ANSI_SUPERVISED}{line}{_ANSI_RESET}" if line else "" for line in text.split("\n")))
            out.append((f"{_ANSI_WEIGHT}{{w={segment.weight:g}}}{_ANSI_RESET}" if view.weighted else "") + newlines)
        elif segment.supervised:
            out.append(f"{SUPERVISED_OPEN}{segment.text}{SUPERVISED_CLOSE}" + (f"{{w={segment.weight:g}}}" if view.weighted else ""))
        elif segment.context and color:
            out.append("\n".join(f"{_ANSI_CONTEXT}{line}{_ANSI_RESET}" if line else "" for line in segment.text.split("\n")))
        elif segment.context:
            out.append(f"{CONTEXT_OPEN}{segment.text}{CONTEXT_CLOSE}")
        else:
            out.append(segment.text)
    lines.append("".join(out).rstrip("\n"))
    return "\n".join(lines) + "\n"


def _split_trailing_newlines(text: str) -> tuple[str, str]:
    stripped = text.rstrip("\n")
    return stripped, text[len(stripped) :]
