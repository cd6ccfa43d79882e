"""A dataset at a glance (`vlsft inspect --summary PAGE.html`): how long its rows are, how much of each trains, how
many images they carry, how long their videos are, and which rows packing would put together.

Lengths and supervised tokens are counted as validation counts them (`RowChecker`: the training collator's own
rendering, image tokens expanded), so they are the numbers training sees; the packs are the plan `packing=True`
would train on (`vlsft.packing.plan.plan_packs`, the same budget and seed). Videos are probed, not decoded."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from vlsft.collator import VisionChatCollator
from vlsft.data.row_checker import RowChecker
from vlsft.data.rows import row_images, row_videos
from vlsft.data.video import VideoLoadError, is_frame_list, probe_video
from vlsft.packing.plan import plan_packs

# Rows checked per call of the row checker.
BATCH = 256


@dataclass
class DatasetSummary:
    """Per row (in `indices` order): its tokens, supervised tokens, images; per video its seconds (None when its
    frame rate is unknown); the pack plan over the trainable rows, and why the others cannot train."""

    indices: list[int]
    lengths: list[int] = field(default_factory=list)
    supervised: list[int] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    video_seconds: list[float | None] = field(default_factory=list)
    problems: dict[int, str] = field(default_factory=dict)
    pack_budget: int | None = None
    packs: list[list[int]] = field(default_factory=list)  # dataset row indices

    @property
    def supervised_shares(self) -> list[float]:
        return [s / n for s, n in zip(self.supervised, self.lengths) if n]


def _video_seconds(value: Any, root: str | None) -> float | None:
    if is_frame_list(value) or (isinstance(value, dict) and "frames" in value):
        frames = value["frames"] if isinstance(value, dict) else value
        fps = value.get("fps") if isinstance(value, dict) else None
        return len(frames) / fps if fps else None
    try:
        probe = probe_video(value, root)
    except VideoLoadError:
        return None  # validation names it; the summary only measures
    return probe.total_frames / probe.fps if probe.fps else None


def summarize(
    dataset, collator: VisionChatCollator, indices: list[int] | None = None, pack_budget: int | None = None, seed: int = 0
) -> DatasetSummary:
    """Measure the rows `indices` (default: all) of `dataset` through `collator`; plan packs of `pack_budget` tokens
    (default: the collator's `max_length`, else the longest row)."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    summary = DatasetSummary(indices=indices)
    checker = RowChecker(collator, getattr(dataset, "features", None))
    trainable: list[int] = []
    for start in range(0, len(indices), BATCH):
        chunk = indices[start : start + BATCH]
        rows = [dict(dataset[index]) for index in chunk]
        for index, row, verdict in zip(chunk, rows, checker.check(rows)):
            summary.images.append(len(row_images(row)))
            root = getattr(collator, "video_root", None) or getattr(collator, "image_root", None)
            summary.video_seconds.extend(_video_seconds(video, root) for video in row_videos(row))
            summary.lengths.append(verdict.num_tokens)
            summary.supervised.append(verdict.num_supervised_tokens)
            if verdict.reason:
                summary.problems[index] = verdict.reason
            else:
                trainable.append(len(summary.lengths) - 1)
    if trainable:
        budget = pack_budget or getattr(collator, "max_length", None) or max(summary.lengths[i] for i in trainable)
        summary.pack_budget = budget
        plan = plan_packs([summary.lengths[i] for i in trainable], budget, seed)
        summary.packs = [[indices[trainable[i]] for i in pack] for pack in plan]
    return summary


@dataclass
class Histogram:
    """Counts of values in equal-width bins `edges[i] <= v < edges[i+1]` (the last bin includes its right edge)."""

    edges: list[float]
    counts: list[int]
    unknown: int = 0  # values that could not be measured (None)


def histogram(values: list[float | None], bins: int = 12, integer: bool = False) -> Histogram:
    known = [value for value in values if value is not None]
    unknown = len(values) - len(known)
    if not known:
        return Histogram([], [], unknown)
    low, high = min(known), max(known)
    if integer:
        width = max(1, math.ceil((high - low + 1) / bins))
        edges = [low + i * width for i in range(math.ceil((high - low + 1) / width) + 1)]
    else:
        width = (high - low) / bins if high > low else 1.0
        edges = [low + i * width for i in range(bins + 1)] if high > low else [low, low + 1.0]
    counts = [0] * (len(edges) - 1)
    for value in known:
        slot = min(int((value - low) // width), len(counts) - 1)
        counts[slot] += 1
    return Histogram(edges, counts, unknown)


def summary_text(summary: DatasetSummary) -> str:
    """A few lines for the terminal: the ranges and medians of the histograms, the packs."""

    def spread(values, unit=""):
        known = sorted(value for value in values if value is not None)
        if not known:
            return "none"
        median = known[len(known) // 2]
        return f"{known[0]:g}-{known[-1]:g}{unit}, median {median:g}{unit}"

    shares = [round(share * 100, 1) for share in summary.supervised_shares]
    lines = [
        f"rows            {len(summary.indices)} ({len(summary.problems)} cannot be trained on)",
        f"tokens per row  {spread(summary.lengths)}",
        f"supervised      {spread(shares, '%')} of each row's tokens",
        f"images per row  {spread(summary.images)}",
        f"videos          {len(summary.video_seconds)}: {spread(summary.video_seconds, ' s')}",
    ]
    if summary.packs:
        lines.append(
            f"packing         {len(summary.indices) - len(summary.problems)} rows in {len(summary.packs)} packs of "
            f"at most {summary.pack_budget} tokens"
        )
    return "\n".join(lines) + "\n"
