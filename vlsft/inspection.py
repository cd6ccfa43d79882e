"""`vlsft inspect`: see exactly what a row trains on: its tokens with the supervised ones highlighted, its images.

    vlsft inspect --config recipes/qwen3vl.yaml [--rows 0:5] [--split eval] [--html rows.html] [--key value ...]

    import vlsft
    vlsft.inspect(config="recipes/qwen3vl.yaml", rows="0:5", html="rows.html")
    vlsft.inspect(dataset, processor, args=VLSFTConfig(...), rows=[3, 7])

Rows go through the training collator itself (same template, tokenizer, image expansion, `max_length` and mask as
`VLSFTTrainer`), so what is shown is what trains. On a terminal the supervised tokens are coloured; elsewhere they
are wrapped in `[[` and `]]`. The HTML page shows the images inline where their tokens are. Rows with per-turn weights
show each supervised run's weight (`{w=0.5}`) and their context-only assistant tokens (weight 0) apart, in
`((` `))` or dimmed.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html as html_lib
import io
import os
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch

from vlsft.collator import VisionChatCollator, training_collator
from PIL import Image

from vlsft.data.rows import ImageLoadError, load_image, row_images
from vlsft.tokens import IGNORE_INDEX, image_token_runs

SUPERVISED_OPEN, SUPERVISED_CLOSE = "[[", "]]"
# Assistant-turn tokens that do not train (weight 0: a context-only turn, `train_on_turns="last"`, ...).
CONTEXT_OPEN, CONTEXT_CLOSE = "((", "))"
# The highlight of supervised tokens in the HTML view (a test looks for it in a browser screenshot).
SUPERVISED_COLOUR = "#ffd84d"
_ANSI_SUPERVISED, _ANSI_IMAGE, _ANSI_DIM, _ANSI_RESET = "\x1b[30;43m", "\x1b[1;36m", "\x1b[2m", "\x1b[0m"
_ANSI_CONTEXT, _ANSI_WEIGHT = "\x1b[2;3;9m", "\x1b[1;35m"  # dim italic struck-through; bold magenta
# Thumbnails in the HTML page are at most this many pixels on their longest side.
THUMBNAIL_SIZE = 384


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


# -- building the views ----------------------------------------------------------------------------------------------


def view_row(row: dict[str, Any], index: int, collator: VisionChatCollator) -> RowView:
    """Collate one row with `collator` and cut its tokens into display segments."""
    from vlsft.data.row_checker import RowChecker

    view = RowView(index=index)
    (verdict,) = RowChecker(collator).check([row])
    view.full_length = verdict.num_tokens
    if dataclasses.is_dataclass(collator) and hasattr(collator, "return_turn_mask"):
        collator = dataclasses.replace(collator, return_turn_mask=True)
    try:
        batch = collator([row])
    except Exception:
        if not verdict.reason:
            raise
        view.problem = verdict.reason
        return view
    if verdict.reason:
        view.problem = verdict.reason  # collatable, but nothing in it trains (or validation refuses it)

    for value in row_images(row):
        try:
            image = load_image(value, collator.image_root)
        except ImageLoadError:
            continue
        view.images.append(image)
        view.image_sizes.append(image.size)

    tokenizer = collator.processor.tokenizer
    ids = batch["input_ids"][0].tolist()
    supervised = (batch["labels"][0] != IGNORE_INDEX).tolist()
    view.num_tokens = len(ids)
    # Labels are shifted: a label at position 0 would predict nothing, and the trainer does not count it.
    view.num_supervised_tokens = sum(supervised[1:])
    in_turn = batch["assistant_turn_mask"][0].tolist() if "assistant_turn_mask" in batch else supervised
    label_weights = batch.get("label_weights")
    weights = label_weights[0].tolist() if label_weights is not None else [float(s) for s in supervised]
    view.supervised_weight = sum(weights[1:])
    view.weighted = label_weights is not None or in_turn != supervised

    # The tokens the model replaces with image features (Gemma 3: its soft tokens, not the placeholder).
    feature_ids = set(getattr(collator, "image_feature_token_ids", None) or [collator.image_token_id])
    video_token_id = getattr(collator, "video_token_id", None)
    view.videos = _video_views(row, collator, batch)
    video_of_run = _video_numbers(batch, collator)
    # (state, kind, ids); state: the weight of a supervised token, "context" for an untrained assistant-turn text
    # token, None for any other; kind: "image", "video" or "text".
    runs: list[tuple[float | str | None, str, list[int]]] = []
    for token, is_supervised, weight, is_turn in zip(ids, supervised, weights, in_turn):
        kind = "image" if token in feature_ids else "video" if token == video_token_id else "text"
        state = weight if is_supervised else "context" if is_turn and kind == "text" else None
        if runs and runs[-1][0] == state and runs[-1][1] == kind:
            runs[-1][2].append(token)
        else:
            runs.append((state, kind, [token]))
    image_runs = image_token_runs(torch.isin(batch["input_ids"][0], torch.tensor(sorted(feature_ids))))
    one_run_per_image = len(image_runs) == len(row_images(row))
    view.num_image_tokens = sum(image_runs)
    view.image_tokens = image_runs if one_run_per_image else []
    image_number = 0
    for state, kind, run in runs:
        if kind == "video":
            token = tokenizer.convert_ids_to_tokens(run[0])
            view.segments.append(Segment(f"{len(run)} x {token}", False, None, len(run), is_image=True, video=video_of_run(len(run))))
        elif kind == "image":
            token = tokenizer.convert_ids_to_tokens(run[0])
            number = image_number if one_run_per_image else None
            view.segments.append(Segment(f"{len(run)} x {token}", False, number, len(run), is_image=True))
            image_number += 1
        else:
            text = tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            is_supervised = isinstance(state, float)
            segment = Segment(text, is_supervised, num_tokens=len(run), context=state == "context")
            segment.weight = state if is_supervised else 0.0
            view.segments.append(segment)
    return view


def _video_views(row: dict[str, Any], collator: VisionChatCollator, batch) -> list[VideoView]:
    """The row's videos as the collator samples them, with the tokens each one expands to."""
    from vlsft.data.rows import row_videos

    if getattr(collator, "video_token", None) is None or "video_grid_thw" not in batch:
        return []
    views = []
    merge = collator.video_processor.merge_size ** 2
    for video, grid in zip(collator.load_videos(row_videos(row)), batch["video_grid_thw"].tolist()):
        count, height, width = video.frames.shape[:3]
        total = collator.video_token_ids(count, height, width, video.metadata).numel()
        frames = [Image.fromarray(frame) for frame in video.frames]
        views.append(VideoView(frames, video.metadata.timestamps, (width, height), grid[0] * grid[1] * grid[2] // merge, total))
    return views


def _video_numbers(batch, collator: VisionChatCollator):
    """A function giving, run after run of video tokens in order, the number of the video each run belongs to."""
    if "video_grid_thw" not in batch:
        return lambda length: None
    merge = collator.video_processor.merge_size ** 2
    remaining = iter((batch["video_grid_thw"].prod(-1) // merge).tolist())
    state = {"number": -1, "left": 0}

    def number_of(length: int) -> int:
        if state["left"] <= 0:
            state["number"] += 1
            state["left"] = next(remaining, 0)
        state["left"] -= length
        return state["number"]

    return number_of


def select_rows(spec: str | int | slice | list[int] | range | None, size: int) -> list[int]:
    """Row indices from `"0:5"`, `"3"`, `"1,4,9"`, `"10:"`, an int, a slice or a list (Python slice rules)."""
    if spec is None:
        spec = "0:5"
    if isinstance(spec, int):
        spec = [spec]
    elif isinstance(spec, str):
        text = spec.strip()
        if ":" in text:
            parts = [int(part) if part.strip() else None for part in text.split(":")]
            if len(parts) > 3:
                raise ValueError(f"--rows {spec!r}: use START:STOP, e.g. 0:5")
            spec = slice(*parts)
        else:
            try:
                spec = [int(part) for part in text.split(",") if part.strip()]
            except ValueError:
                raise ValueError(f"--rows {spec!r}: use START:STOP (0:5), one index (3) or a list (1,4,9)") from None
    if isinstance(spec, slice):
        indices = list(range(size)[spec])
        if not indices:
            start, stop = spec.start, spec.stop
            raise ValueError(
                f"--rows {start if start is not None else ''}:{stop if stop is not None else ''} selects no row of the "
                f"{size}-row dataset: use START:STOP with START < STOP (e.g. 0:5)"
            )
        return indices
    indices = list(spec)
    if not indices:
        raise ValueError("--rows selects no row: use START:STOP (0:5), one index (3) or a list (1,4,9)")
    for index in indices:
        if not -size <= index < size:
            raise ValueError(f"row {index} does not exist: the dataset has {size} rows")
    return [index % size for index in indices]


# -- text and HTML ---------------------------------------------------------------------------------------------------


def _summary(view: RowView) -> str:
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
    lines = [head + _summary(view)]
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


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #1d1d1f; background: #ffffff; }}
section {{ border: 1px solid #d0d0d7; border-radius: 6px; padding: 12px 16px; margin-bottom: 20px; }}
h2 {{ font-size: 16px; margin: 0 0 4px 0; }}
.stats {{ color: #555; font-size: 13px; margin-bottom: 10px; }}
.problem {{ color: #b00020; font-weight: bold; margin-bottom: 8px; }}
.tokens {{ font-family: monospace; font-size: 14px; white-space: pre-wrap; line-height: 1.6; }}
.sup {{ background: {colour}; border-radius: 2px; }}
.ctx {{ color: #8a8a93; text-decoration: line-through; border: 1px dashed #b0b0b8; border-radius: 2px; }}
.w {{ color: #a1127a; font-size: 11px; font-weight: bold; vertical-align: super; }}
figure {{ display: inline-block; vertical-align: middle; margin: 4px 6px; text-align: center; }}
figure img {{ display: block; min-width: 96px; max-width: {thumb}px; max-height: {thumb}px; image-rendering: pixelated;
  border: 1px solid #888; }}
figcaption {{ font-size: 11px; color: #555; }}
.tile {{ color: #0b6e99; }}
.video {{ display: block; border-left: 3px solid #0b6e99; padding-left: 6px; margin: 4px 0; }}
.video figure img.frame {{ min-width: 64px; max-width: 128px; max-height: 128px; }}
.legend {{ font-size: 13px; margin-bottom: 16px; }}
</style></head><body>
<h1>{title}</h1>
<div class="legend"><span class="sup">highlighted</span> tokens are supervised (the loss is computed on them), each
run with its loss weight <span class="w">w=…</span> in rows with per-turn weights; <span class="ctx">struck-through</span>
assistant tokens are context only (weight 0); images sit where their tokens are.</div>
{rows}
</body></html>
"""


def _data_uri(image) -> str:
    image = image.copy()
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render_html(views: list[RowView], title: str = "vlsft inspect") -> str:
    """A self-contained HTML page of the rows: supervised tokens highlighted, images inline."""
    sections = []
    for view in views:
        body = []
        if view.problem:
            body.append(f'<div class="problem">{html_lib.escape(view.problem)}</div>')
        tokens = []
        shown_videos: set[int] = set()
        for segment in view.segments:
            text = html_lib.escape(segment.text)
            if segment.video is not None:
                if segment.video not in shown_videos and segment.video < len(view.videos):
                    shown_videos.add(segment.video)
                    tokens.append(_video_strip(segment.video, view.videos[segment.video]))
                tokens.append(f'<span class="tile">[{text}]</span>')
            elif segment.is_image and segment.image is None:
                tokens.append(f'<span class="tile">[{text}]</span>')
            elif segment.is_image:
                caption = f"image {segment.image} · {segment.text}"
                if segment.image < len(view.images):
                    width, height = view.image_sizes[segment.image]
                    caption = f"image {segment.image} · {width}×{height} · {segment.num_tokens} tokens"
                    tokens.append(
                        f'<figure><img src="{_data_uri(view.images[segment.image])}" alt="image {segment.image}">'
                        f"<figcaption>{html_lib.escape(caption)}</figcaption></figure>"
                    )
                else:
                    tokens.append(f"<figure><figcaption>{html_lib.escape(caption)}</figcaption></figure>")
            elif segment.supervised:
                weight = f'<span class="w">w={segment.weight:g}</span>' if view.weighted else ""
                tokens.append(f'<span class="sup" data-weight="{segment.weight:g}">{text}</span>{weight}')
            elif segment.context:
                tokens.append(f'<span class="ctx" title="context only: weight 0">{text}</span>')
            else:
                tokens.append(text)
        if view.images and not view.image_tokens:
            # Tiled images (several runs of tokens each) cannot be put at one place in the text: shown above it.
            body.append("".join(
                f'<figure><img src="{_data_uri(image)}" alt="image {number}"><figcaption>image {number} · '
                f"{image.width}×{image.height}</figcaption></figure>"
                for number, image in enumerate(view.images)
            ))
        if tokens:
            body.append(f'<div class="tokens">{"".join(tokens)}</div>')
        stats = html_lib.escape(_summary(view)) if view.segments else ""
        sections.append(
            f'<section id="row-{view.index}"><h2>row {view.index}</h2><div class="stats">{stats}</div>{"".join(body)}</section>'
        )
    return _PAGE.format(title=html_lib.escape(title), colour=SUPERVISED_COLOUR, thumb=THUMBNAIL_SIZE, rows="\n".join(sections))


def _video_strip(number: int, video: VideoView) -> str:
    """A video's sampled frames side by side, each with its timestamp under it."""
    frames = "".join(
        f'<figure><img src="{_data_uri(frame)}" alt="video {number} at {time:.1f} s" class="frame">'
        f"<figcaption>{time:.1f} s</figcaption></figure>"
        for frame, time in zip(video.frames, video.timestamps)
    )
    caption = (f"video {number} · {len(video.frames)} frames · {video.size[0]}×{video.size[1]} · "
               f"{video.video_tokens} video tokens ({video.total_tokens} with timestamps and markers)")
    return f'<div class="video" id="video-{number}">{frames}<div class="stats">{html_lib.escape(caption)}</div></div>'


# -- the API and the command -----------------------------------------------------------------------------------------


def inspect(
    dataset=None,
    processor=None,
    *,
    config: str | os.PathLike | None = None,
    overrides: list[str] = (),
    split: str = "train",
    args=None,
    collator: VisionChatCollator | None = None,
    rows: str | int | slice | list[int] | None = "0:5",
    html: str | os.PathLike | None = None,
    color: bool | None = None,
    file: TextIO | None = None,
) -> list[RowView]:
    """Show rows as the trainer trains on them, and return them as `RowView`s.

    Either `config` (a recipe: its processor, its `split` dataset and its `training` section, with `overrides` as on
    the command line), or `dataset` (a `datasets.Dataset` or a list of rows) with `processor` and `args` (a
    `VLSFTConfig`; default settings without it), or an explicit `collator`.

    Args:
        rows: which rows: `"0:5"`, `"3"`, `"1,4,9"`, an int, a slice or a list.
        html: also write a self-contained HTML page with the images inline to this path.
        color: colour the terminal output; by default, when `file` is a terminal and `NO_COLOR` is unset.
        file: where the text goes (default stdout; pass `io.StringIO()` for none).
    """
    if config is not None:
        from vlsft.recipes.build import build_datasets, build_processor, build_training_config
        from vlsft.recipes.loading import load_recipe

        recipe = load_recipe(config, list(overrides))
        processor = build_processor(recipe)
        args = build_training_config(recipe, check_only=True)
        train, evaluation = build_datasets(recipe)
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if split == "eval" and evaluation is None:
            raise ValueError(f"{config}: the recipe has no eval data (`data.eval` or `data.eval_fraction`).")
        dataset = train if split == "train" else evaluation
    if dataset is None:
        raise ValueError("pass a recipe (`config=`) or a `dataset` with its `processor`.")
    if collator is None:
        if processor is None:
            raise ValueError("pass the model's `processor` (or a `collator`) with the dataset.")
        if args is None:
            from vlsft.config import VLSFTConfig

            args = VLSFTConfig(output_dir=os.devnull, report_to="none", use_cpu=True)
        collator = training_collator(processor, args)

    views = [view_row(dict(dataset[index]), index, collator) for index in select_rows(rows, len(dataset))]
    file = sys.stdout if file is None else file
    if color is None:
        color = hasattr(file, "isatty") and file.isatty() and "NO_COLOR" not in os.environ
    if not color:
        legend = f"(supervised tokens are shown {SUPERVISED_OPEN}like this{SUPERVISED_CLOSE}"
        if any(view.weighted for view in views):
            legend += f" followed by their weight {{w=...}}; untrained assistant tokens {CONTEXT_OPEN}like this{CONTEXT_CLOSE}"
        file.write(legend + ")\n")
    for view in views:
        file.write(render_text(view, color=color))
    if html is not None:
        title = f"vlsft inspect: {os.path.basename(os.fspath(config)) if config else 'dataset'} ({split})"
        with open(html, "w", encoding="utf-8") as out:
            out.write(render_html(views, title=title))
        file.write(f"wrote {html} ({len(views)} rows)\n")
    return views


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vlsft inspect",
        description="Show rows of a recipe's dataset as the trainer trains on them: tokens with the supervised ones "
        "highlighted, token counts, image tokens per image. Extra `--key value` pairs override the recipe.",
    )
    parser.add_argument("--config", required=True, help="the recipe YAML file")
    parser.add_argument("--rows", default="0:5", help="rows to show: 0:5 (default), 7, or 1,4,9")
    parser.add_argument("--split", default="train", choices=("train", "eval"), help="which dataset (default train)")
    parser.add_argument("--html", help="also write an HTML page with the images inline to this file")
    parser.add_argument("--color", default="auto", choices=("auto", "always", "never"), help="colour on a terminal")
    options, overrides = parser.parse_known_args(argv)
    from vlsft.recipes.schema import RecipeError

    color = {"auto": None, "always": True, "never": False}[options.color]
    try:
        inspect(config=options.config, overrides=overrides, split=options.split, rows=options.rows, html=options.html, color=color)
    except RecipeError as error:
        print(f"vlsft: invalid recipe: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"vlsft inspect: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
