"""A row as the trainer sees it: collated by the training collator (same template, tokenizer, image expansion,
`max_length` and mask as `VLSFTTrainer`) and cut into display segments: runs of supervised text, of untrained text,
of image tokens and of video tokens."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from PIL import Image

from vlsft.collator import VisionChatCollator
from vlsft.data.row_checker import RowChecker
from vlsft.data.rows import ImageLoadError, load_image, row_images, row_videos
from vlsft.inspection.views import RowView, Segment, VideoView
from vlsft.tokens import IGNORE_INDEX, image_token_runs


def view_row(row: dict[str, Any], index: int, collator: VisionChatCollator) -> RowView:
    """Collate one row with `collator` and cut its tokens into display segments."""
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
