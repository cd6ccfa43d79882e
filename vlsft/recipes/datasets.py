"""Datasets named in recipes: Hub names, local JSONL / JSON / Parquet / CSV files or globs, and image folders, all
through `datasets.load_dataset`; column mapping, row limits, held-out eval fractions and weighted mixtures."""

from __future__ import annotations

import glob
import os
import re
from typing import Any

from vlsft.data.rows import resolve_path
from vlsft.recipes.mixture import hold_out, limit_rows, mixture_counts, resample
from vlsft.recipes.registry import is_local_dataset, load_local_dataset
from vlsft.recipes.schema import DatasetSource, Recipe, RecipeError

# Local data files by extension -> the `datasets` packaged builder that reads them.
LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
CONVERSATION_COLUMNS = ("messages", "images", "videos", "tools")


# -- datasets ----------------------------------------------------------------------------------------------------


def build_datasets(recipe: Recipe):
    """(train, eval or None) as `datasets.Dataset`s in TRL's conversational format: `messages`, `images` (a list of
    `datasets.Image(decode=False)`: `{"bytes", "path"}` dicts, decoded by the collator), `tools` when any source has
    them, and the extra columns that every source shares.

    Every source goes through `datasets.load_dataset` (Hub name, local file, image folder) except the embedded
    `demo-shapes`. Row limits, the `eval_fraction` hold-out and the weighted mixture are documented on
    `vlsft.recipes.schema.DataSection`; all are seeded by `data.seed`.
    """
    import datasets

    data = recipe.data
    image_root = recipe.training.get("image_root")
    video_root = recipe.training.get("video_root")
    train_parts, eval_parts = [], []
    for index, source in enumerate(data.train):
        dataset = load_source(source, f"data.train.{index}", data.cache_dir, image_root, data.seed, video_root)
        dataset = _limit_source(dataset, source, seed=(data.seed, index, 0))
        if data.eval_fraction is not None:
            dataset, held_out = hold_out(dataset, data.eval_fraction, (data.seed, index, 1), where=f"data.train.{index}")
            eval_parts.append(held_out)
        train_parts.append(dataset)
    for index, source in enumerate(data.eval or []):
        dataset = load_source(source, f"data.eval.{index}", data.cache_dir, image_root, data.seed, video_root)
        eval_parts.append(_limit_source(dataset, source, seed=(data.seed, 1000 + index, 0)))

    if any(source.weight is not None for source in data.train):
        counts = mixture_counts([len(d) for d in train_parts], [s.weight for s in data.train], data.mixture_rows)
        train_parts = [resample(d, n, seed=(data.seed, i, 2)) for i, (d, n) in enumerate(zip(train_parts, counts))]
        train_parts = [d for d in train_parts if len(d)]
    train = datasets.concatenate_datasets(_unify(train_parts))
    evaluation = datasets.concatenate_datasets(_unify(eval_parts)) if eval_parts else None
    if len(train) == 0:
        raise RecipeError("the training set is empty after row limits and the evaluation hold-out.")
    return train, evaluation


def load_source(
    source: DatasetSource,
    where: str,
    cache_dir: str | None = None,
    image_root: str | None = None,
    seed: int = 0,
    video_root: str | None = None,
):
    """One source as a `datasets.Dataset` with `messages`, `images` (and `tools` / extra columns if it has them).

    Relative image paths resolve against `source.image_root`; else, when `image_root` (`training.image_root`) is not
    set, against the directory of a local data file. Otherwise they stay relative for the collator's image root.
    Relative video paths (a `videos` column) likewise, with `video_root` (`training.video_root`) in the place of
    `image_root` when it is set.
    """
    if is_local_dataset(source.path):
        dataset = load_local_dataset(source.path, split=source.split, rows=source.rows, seed=seed, cache_dir=cache_dir)
        local_dir = None
    else:
        dataset, local_dir = _load_with_datasets(source, where, cache_dir)
    if source.columns:
        missing = {target: column for target, column in source.columns.items() if column not in dataset.column_names}
        if missing:
            target, column = next(iter(missing.items()))
            raise RecipeError(
                f"`{where}.columns.{target}`: the dataset has no column `{column}`; its columns: {dataset.column_names}."
            )
        clashes = [t for t, c in source.columns.items() if t in dataset.column_names and t != c]
        dataset = dataset.remove_columns(clashes).rename_columns(
            {column: target for target, column in source.columns.items() if column != target}
        )
    if source.format != "messages":
        from vlsft.data.formats import convert_conversations

        try:
            dataset = convert_conversations(dataset, source.format)
        except ValueError as error:
            raise RecipeError(f"`{where}.format`: {error}.") from error
    root = source.image_root or (None if image_root else local_dir)
    video_root = source.image_root or (None if (video_root or image_root) else local_dir)
    return _resolve_video_paths(_to_conversational(dataset, where, root), video_root)


def _load_with_datasets(source: DatasetSource, where: str, cache_dir: str | None):
    """`datasets.load_dataset` for a local file or glob (packaged builder by extension), a local directory (image
    folder or data files, inferred by `datasets`) or a Hub name. Returns (dataset, local directory or None)."""
    import datasets

    path = os.path.expanduser(source.path)
    common = {"split": source.split, "cache_dir": cache_dir}
    if os.path.isfile(path) or glob.has_magic(path):
        files = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
        if not files:
            raise RecipeError(f"`{where}.path`: no file matches {source.path!r}.")
        builder = LOCAL_BUILDERS.get(file_extension(files[0]))
        if builder is None:
            raise RecipeError(
                f"`{where}.path`: cannot read {files[0]!r}; local files must be one of {', '.join(LOCAL_BUILDERS)}."
            )
        split_name = re.split(r"[\[+]", source.split)[0]
        dataset = datasets.load_dataset(builder, data_files={split_name: files}, **common)
        return dataset, os.path.dirname(os.path.abspath(files[0]))
    if os.path.isdir(path):
        return datasets.load_dataset(path, **common), os.path.abspath(path)
    if looks_local(source.path):
        raise RecipeError(f"`{where}.path`: {source.path!r} does not exist.")
    dataset = datasets.load_dataset(source.path, name=source.name, revision=source.revision, **common)
    return dataset, None


def looks_local(path: str) -> bool:
    """A path meant as a local file (that may be missing), not a Hub name."""
    return path.startswith((".", "/", "~")) or file_extension(path) in LOCAL_BUILDERS


def file_extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _to_conversational(dataset, where: str, image_root: str | None):
    """Bring a source to the common layout: `images` as a list of undecoded `datasets.Image` values."""
    from datasets import Image, List, Value

    columns = dataset.column_names
    if "messages" not in columns:
        from vlsft.data.formats import missing_messages_message

        raise RecipeError(missing_messages_message(columns, dataset[0] if len(dataset) else None, f"`{where}`"))
    if "image" in columns and "images" in columns:
        raise RecipeError(f"`{where}` has both `image` and `images` columns; drop one with `columns`.")
    features = dataset.features
    image_column = "images" if "images" in columns else "image" if "image" in columns else None
    if image_column is None:
        return dataset.add_column("images", [[]] * len(dataset), feature=List(Image(decode=False)))
    feature = features[image_column]
    single = not isinstance(feature, List)
    item = feature if single else feature.feature
    if image_column == "image" and not single:  # a list of images under the singular name
        dataset, image_column = dataset.rename_column("image", "images"), "images"
    if isinstance(item, Image):
        # Undecoded: rows hold `{"bytes", "path"}` and the collator decodes, so a bad image is a row error.
        dataset = dataset.cast_column(image_column, Image(decode=False) if single else List(Image(decode=False)))
    elif not (isinstance(item, Value) and item.dtype in ("string", "large_string")):
        raise RecipeError(f"`{where}`: column `{image_column}` holds {feature}; expected images or image paths.")

    paths_to_resolve = image_root is not None and not isinstance(item, Image)
    if single or paths_to_resolve:
        def as_lists(values):
            lists = []
            for value in values:
                items = [value] if single else value
                lists.append([_resolve_image(v, image_root) for v in items or [] if v is not None])
            return {"images": lists}

        target = dataset.features.copy()
        target.pop(image_column)
        target["images"] = List(Image(decode=False))
        dataset = dataset.map(
            as_lists, input_columns=[image_column], batched=True, remove_columns=[image_column], features=target,
            desc=f"{where}: image paths",
        )
    else:
        dataset = dataset.cast_column("images", List(Image(decode=False)))
    return dataset


def _resolve_video_paths(dataset, root: str | None):
    """Relative video file paths (a `videos` column of strings) resolved like image paths; the videos themselves stay
    undecoded until the collator samples their frames."""
    from datasets import List, Value

    feature = dataset.features.get("videos")
    is_paths = isinstance(feature, List) and isinstance(feature.feature, Value) and feature.feature.dtype == "string"
    if root is None or not is_paths:
        return dataset
    return dataset.map(
        lambda values: {"videos": [[resolve_path(v, root) for v in videos or []] for videos in values]},
        input_columns=["videos"], batched=True, desc="video paths",
    )


def _resolve_image(value, image_root: str | None):
    if isinstance(value, str):
        return {"bytes": None, "path": resolve_path(value, image_root)}
    if isinstance(value, dict) and value.get("path") and not value.get("bytes"):
        return {"bytes": None, "path": resolve_path(value["path"], image_root)}
    return value


def _limit_source(dataset, source: DatasetSource, seed: tuple[int, ...]):
    if is_local_dataset(source.path):
        return dataset  # generated with exactly `rows` rows
    return limit_rows(dataset, source, seed)


def _unify(parts: list) -> list:
    """Cast sources to one schema so they concatenate: message structs get the union of their fields (missing
    ones null), `tools` is added as null where absent, and extra columns are kept only if every source has them."""
    from datasets import Features

    if len(parts) <= 1:
        return parts
    merged: dict[str, Any] = {}
    for column in CONVERSATION_COLUMNS:
        present = [part.features[column] for part in parts if column in part.column_names]
        if present:
            feature = present[0]
            for other in present[1:]:
                feature = _merge_feature(feature, other)
            merged[column] = feature
    for column in parts[0].column_names:
        if column not in merged and all(
            column in part.column_names and part.features[column] == parts[0].features[column] for part in parts
        ):
            merged[column] = parts[0].features[column]
    unified = []
    for part in parts:
        drop = [column for column in part.column_names if column not in merged]
        part = part.remove_columns(drop) if drop else part
        if "tools" in merged and "tools" not in part.column_names:
            part = part.add_column("tools", [None] * len(part), feature=merged["tools"])
        if "videos" in merged and "videos" not in part.column_names:  # an image source mixed with video sources
            part = part.add_column("videos", [[]] * len(part), feature=merged["videos"])
        target = Features({column: merged[column] for column in part.column_names})
        reencode = [column for column in part.column_names if _needs_reencoding(part.features[column], target[column])]
        if reencode:
            # Arrow cannot turn structs into JSON values that are themselves JSON: go through Python values.
            part = part.map(
                lambda *values: dict(zip(reencode, values)), input_columns=reencode, batched=True, features=target,
                desc="aligning dataset schemas",
            )
        elif part.features != target:
            part = part.cast(target)
        unified.append(part)
    return unified


def _needs_reencoding(source, target) -> bool:
    """Whether `source` values become `Json` somewhere in `target` (an Arrow cast would store them wrongly)."""
    from datasets import Json, LargeList, List

    if isinstance(target, Json):
        return not isinstance(source, Json)
    if isinstance(target, dict) and isinstance(source, dict):
        return any(_needs_reencoding(source[key], target[key]) for key in source if key in target)
    if isinstance(target, (List, LargeList)) and isinstance(source, (List, LargeList)):
        return _needs_reencoding(source.feature, target.feature)
    return False


def _merge_feature(a, b):
    """One feature that holds the values of both: struct fields united, lists merged item-wise, and `Json` (each
    value stored as JSON, decoded back as is) where the sources store different kinds of values."""
    from datasets import Json, LargeList, List, Value

    if a == b:
        return a
    if isinstance(a, Value) and a.dtype == "null":
        return b
    if isinstance(b, Value) and b.dtype == "null":
        return a
    if isinstance(a, dict) and isinstance(b, dict):
        return {key: _merge_feature(a[key], b[key]) if key in a and key in b else a.get(key, b.get(key)) for key in {**a, **b}}
    if isinstance(a, (List, LargeList)) and type(a) is type(b) and a.length == b.length:
        return type(a)(_merge_feature(a.feature, b.feature))
    return Json()
