"""The cache key of a dataset's validation: `Dataset.map` reuses the verdicts it stored for a dataset on disk when
this fingerprint is the same, so it covers everything a verdict depends on, the code that decides it included."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from datasets.fingerprint import Hasher

from vlsft.collator import VisionChatCollator
from vlsft.data.rows import resolve_path

# The modules whose logic decides a row's verdict: a change to any of them invalidates cached results. They are every
# vlsft module the row checker imports, directly or not (tests/test_validation.py checks that none is missing).
VERDICT_MODULES = (
    "vlsft.data.validation",
    "vlsft.data.row_checker",
    "vlsft.data.message_checks",
    "vlsft.data.media_checks",
    "vlsft.data.formats",
    "vlsft.data.rows",
    "vlsft.data.video",
    "vlsft.data.video_values",
    "vlsft.data.video_orientation",
    "vlsft.collator",
    "vlsft.collation.reasoning",
    "vlsft.collation.borrowed_records",
    "vlsft.collation.rendering",
    "vlsft.collation.weighting",
    "vlsft.collation.images",
    "vlsft.collation.videos",
    "vlsft.collation.template_kwargs",
    "vlsft.collation.template_clock",
    "vlsft.collation.processor_expansion",
    "vlsft.families",
    "vlsft.generic_masks",
    "vlsft.generic_family",
    "vlsft.model_parts",
    "vlsft.templates",
    "vlsft.tokens",
    "vlsft.weights",
)


def validation_fingerprint(dataset: Dataset, collator: VisionChatCollator, allow_truncated_end_of_turn: bool = False) -> str:
    """A fingerprint of everything a row's verdict depends on: the dataset's content, the image and video files it
    names (size and modification time of each), the collator's settings, the tokenizer, the image and video
    processors, this check's code and the versions of the libraries that decode and tokenize. Built from plain values
    so that it is the same in every process (hashing the collator object itself would pickle the whole processor)."""
    import av
    import PIL
    import tokenizers
    import transformers

    tokenizer = collator.processor.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    tokenizer_state = backend.to_str() if backend is not None else Hasher.hash(tokenizer)
    image_processor = collator.processor.image_processor
    sources = [Path(importlib.import_module(name).__file__).read_bytes() for name in VERDICT_MODULES]
    return Hasher.hash(
        [
            "vlsft-validate-rows",
            dataset._fingerprint,
            media_file_stats(dataset, collator.image_root, _video_root(collator)),
            collator.chat_template,
            collator.max_length,
            collator.image_root,
            collator.assistant_only_loss,
            getattr(collator, "template_kwargs", None),
            [getattr(collator, key, None) for key in ("train_on_turns", "train_on_eos", "reasoning_weight")],
            [getattr(collator, name, None) for name in ("video_root", "video_fps", "video_min_frames",
                                                         "video_max_frames", "video_max_pixels")],
            collator.escape_control_tokens,
            allow_truncated_end_of_turn,
            type(collator).__qualname__,
            tokenizer_state,
            *(_processor_state(processor) for processor in (image_processor, getattr(collator, "video_processor", None))),
            sources,
            [PIL.__version__, av.__version__, transformers.__version__, tokenizers.__version__, torch.__version__],
        ]
    )


def _processor_state(processor) -> str:
    return processor.to_json_string() if hasattr(processor, "to_json_string") else repr(processor)


def _video_root(collator: VisionChatCollator) -> str | None:
    """The directory relative video paths are read from (`VideoExpansion.load_videos`)."""
    root = getattr(collator, "video_root", None)
    return root if root is not None else collator.image_root


def media_file_stats(dataset: Dataset, image_root: str | None, video_root: str | None) -> list[tuple[str, Any]]:
    """(path, (size, mtime_ns, mode)) of every image and video file the dataset names by path: in the `images` /
    `image` / `videos` / `video` columns (a frame list's frames included) and inline in the messages' image and video
    items. A file emptied, replaced or deleted since a validated run changes the fingerprint, so its rows are checked
    again. (Media stored as bytes are part of the dataset's own fingerprint; only path strings are read, not bytes.)"""
    columns = [("images", image_root), ("image", image_root), ("videos", video_root), ("video", video_root)]
    named = [(_media_paths(dataset.data.column(name)), root) for name, root in columns if name in dataset.column_names]
    if "messages" in dataset.column_names:
        for kind, root in (("image", image_root), ("video", video_root)):
            named.append((_media_paths(dataset.data.column("messages"), inline=kind), root))
    stats = []
    for paths, root in named:
        for path in paths:
            resolved = resolve_path(path, root)
            try:
                info = os.stat(resolved)
                stats.append((resolved, (info.st_size, info.st_mtime_ns, info.st_mode)))
            except OSError as error:
                stats.append((resolved, type(error).__name__))
    return stats


def _media_paths(column, inline: str | None = None) -> list[str]:
    """The file paths in an Arrow column of media values: paths, `{bytes, path}` structs (leaving out those stored as
    bytes), frame lists (`{frames, fps}` structs or lists), or lists of any of these. `inline`: the column holds
    messages, and the paths are those of their content items' `inline` field ("image" or "video")."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        values = pc.list_flatten(values)
    if inline is None and (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return [path for path in values.to_pylist() if path]
    if not pa.types.is_struct(values.type):
        return []
    names = [values.type.field(i).name for i in range(values.type.num_fields)]
    if inline is not None:  # messages -> content items (a string content has none) -> their `inline` field
        if "content" in names:
            return _media_paths(values.field("content"), inline)
        return _media_paths(values.field(inline)) if inline in names else []
    paths = []
    if "path" in names:
        stored = values.field("path")
        paths += _media_paths(pc.filter(stored, pc.is_null(values.field("bytes"))) if "bytes" in names else stored)
    if "frames" in names:
        paths += _media_paths(values.field("frames"))
    return paths
