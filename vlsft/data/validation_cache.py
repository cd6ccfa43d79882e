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
    "vlsft.collator",
    "vlsft.collation.rendering",
    "vlsft.collation.weighting",
    "vlsft.collation.images",
    "vlsft.collation.videos",
    "vlsft.collation.template_kwargs",
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
    """A fingerprint of everything a row's verdict depends on: the dataset's content, the image files it names (size
    and modification time of each), the collator's settings, the tokenizer, the image processor, this check's code
    and the versions of the libraries that decode and tokenize. Built from plain values so that it is the same in every
    process (hashing the collator object itself would pickle the whole processor)."""
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
            image_file_stats(dataset, collator.image_root),
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
            image_processor.to_json_string() if hasattr(image_processor, "to_json_string") else repr(image_processor),
            sources,
            [PIL.__version__, transformers.__version__, tokenizers.__version__, torch.__version__],
        ]
    )


def image_file_stats(dataset: Dataset, image_root: str | None) -> list[tuple[str, Any]]:
    """(path, (size, mtime_ns, mode)) of every image file the dataset's `images` / `image` columns name by path: a
    file emptied, replaced or deleted since a validated run changes the fingerprint, so its rows are checked again.
    (Images stored as bytes are part of the dataset's own fingerprint; only the path column is read, not the bytes.)"""
    stats = []
    for column in ("images", "image"):
        if column in dataset.column_names:
            for path in _image_paths(dataset.data.column(column)):
                resolved = resolve_path(path, image_root)
                try:
                    info = os.stat(resolved)
                    stats.append((resolved, (info.st_size, info.st_mtime_ns, info.st_mode)))
                except OSError as error:
                    stats.append((resolved, type(error).__name__))
    return stats


def _image_paths(column) -> list[str]:
    """The file paths in an Arrow image column (paths, `{bytes, path}` structs, or lists of either), leaving out
    images stored as bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        values = pc.list_flatten(values)
    if pa.types.is_struct(values.type):
        names = [values.type.field(i).name for i in range(values.type.num_fields)]
        if "path" not in names:
            return []
        paths = values.field("path")
        if "bytes" in names:
            paths = pc.filter(paths, pc.is_null(values.field("bytes")))
        values = paths
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return []
    return [path for path in values.to_pylist() if path]
