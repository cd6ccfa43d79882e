"""Reading a recipe: YAML, `--key value` overrides, and the keys and types of every section, checked when the recipe
loads, before any model or dataset (the sections are in `vlsft.recipes.schema`, the value checks in
`vlsft.recipes.checks`)."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from typing import Any

import yaml

from vlsft.recipes.checks import check_values
from vlsft.recipes.schema import (
    TOP_LEVEL,
    DataSection,
    DatasetSource,
    LayoutSection,
    LoraSection,
    ModelSection,
    Recipe,
    RecipeError,
)
from vlsft.recipes.typecheck import coerce, describe_value, unknown_key


# -- YAML --------------------------------------------------------------------------------------------------------


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-5` (no dot) as a string; recipes mean the number."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_value(text: str) -> Any:
    """A command-line value parsed as YAML: `5` -> 5, `1e-5` -> 1e-05, `true` -> True, `[a, b]` -> list."""
    try:
        return yaml.load(text, Loader=_RecipeLoader)
    except yaml.YAMLError:
        return text


# -- overrides ---------------------------------------------------------------------------------------------------


def parse_overrides(argv: list[str]) -> list[tuple[str, Any]]:
    """`--key value`, `--key=value` and bare `--flag` (True) into (key, parsed value) pairs."""
    pairs, index = [], 0
    while index < len(argv):
        token = argv[index]
        if not token.startswith("--") or token == "--":
            raise RecipeError(f"Unexpected argument {token!r}: overrides are `--key value` (e.g. `--max_steps 10`).")
        key = token[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            index += 1
        elif index + 1 < len(argv) and not argv[index + 1].startswith("--"):
            raw = argv[index + 1]
            index += 2
        else:
            raw = "true"
            index += 1
        pairs.append((key.replace("-", "_") if "." not in key else key, parse_value(raw)))
    return pairs


def apply_override(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` in the raw recipe dict: a dotted path from the top (`model.dtype`, `data.train.0.rows`), or a
    `training` field (`output_dir`)."""
    parts = key.split(".")
    if parts[0] not in TOP_LEVEL:
        if len(parts) > 1:
            unknown_key(parts[0], TOP_LEVEL, where="recipe", hint=f"in override --{key}")
        parts = ["training", *parts]
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node, (dict, list)):
            raise RecipeError(f"Override --{key}: `{'.'.join(parts[:depth])}` is a value, not a section.")
        if isinstance(node, list):
            node = node[_list_index(node, part, parts[: depth + 1])]
            continue
        if node.get(part) is None:
            node[part] = {}
        elif parts[: depth + 1] in (["data", "train"], ["data", "eval"]) and isinstance(node[part], dict):
            node[part] = [node[part]]  # a single source given without a list
        node = node[part]
    last = parts[-1]
    if not isinstance(node, (dict, list)):
        raise RecipeError(f"Override --{key}: `{'.'.join(parts[:-1])}` is a value, not a section.")
    if isinstance(node, list):
        node[_list_index(node, last, parts)] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"Override path {'.'.join(path)!r}: {part!r} is not an index of a list of {len(node)}.")
    return int(part)



# -- loading and validation --------------------------------------------------------------------------------------


def load_recipe(path: str | os.PathLike, overrides: list[str] | list[tuple[str, Any]] = ()) -> Recipe:
    """Read, override and validate a recipe. Raises `RecipeError` naming the key at fault."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RecipeError(f"Recipe file not found: {path}")
    with open(path, encoding="utf-8") as file:
        try:
            raw = yaml.load(file, Loader=_RecipeLoader)
        except yaml.YAMLError as error:
            raise RecipeError(f"{path}: not valid YAML: {error}") from error
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with sections {list(TOP_LEVEL)}, got {type(raw).__name__}.")
    pairs = parse_overrides(list(overrides)) if overrides and isinstance(next(iter(overrides)), str) else overrides
    for key, value in pairs:
        apply_override(raw, key, value)
    try:
        return recipe_from_dict(raw, path=path)
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None


def recipe_from_dict(raw: dict[str, Any], path: str | None = None) -> Recipe:
    """Validate a recipe given as a dict (the parsed YAML)."""
    for key in raw:
        if key not in TOP_LEVEL:
            unknown_key(key, TOP_LEVEL, where="recipe")
    for required in ("model", "data"):
        if raw.get(required) is None:
            raise RecipeError(f"missing section `{required}`.")
    data = dict(_as_mapping(raw["data"], "data"))
    if isinstance(data.get("train"), dict):
        data["train"] = [data["train"]]
    if isinstance(data.get("eval"), dict):
        data["eval"] = [data["eval"]]
    recipe = Recipe(
        model=_build(ModelSection, raw["model"], "model"),
        data=_build(DataSection, data, "data"),
        training=_check_training(raw.get("training") or {}),
        lora=_build(LoraSection, raw["lora"], "lora") if raw.get("lora") is not None else None,
        layout=_build(LayoutSection, raw["layout"], "layout") if raw.get("layout") is not None else LayoutSection(),
        path=path,
    )
    check_values(recipe)
    return recipe


def _as_mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise RecipeError(f"`{where}` must be a mapping, got {describe_value(value)}.")
    return value


def _build(cls, value: Any, where: str):
    """Instantiate a section dataclass from a mapping, checking keys and types (nested sources included)."""
    value = _as_mapping(value, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            unknown_key(key, list(fields), where=where)
    missing = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in value
    ]
    if missing:
        raise RecipeError(f"`{where}` needs `{missing[0]}`.")
    kwargs = {}
    for key, item in value.items():
        hint = hints[key]
        if hint == list[DatasetSource] or hint == (list[DatasetSource] | None):
            if item is None and hint != list[DatasetSource]:
                kwargs[key] = None
                continue
            if not isinstance(item, list) or not item:
                raise RecipeError(f"`{where}.{key}` must be a dataset source or a non-empty list of them, got {describe_value(item)}.")
            kwargs[key] = [_build(DatasetSource, source, f"{where}.{key}.{i}") for i, source in enumerate(item)]
            continue
        kwargs[key] = coerce(item, hint, f"{where}.{key}")
    return cls(**kwargs)


def _check_training(training: Any) -> dict[str, Any]:
    """Keys and types of the `training` section against `VLSFTConfig`'s fields. Values are checked for real when
    the config is built (`vlsft.train.build_training_config`)."""
    training = dict(_as_mapping(training, "training"))
    hints = training_field_types()
    for key, value in training.items():
        if key not in hints:
            unknown_key(key, list(hints), where="training", hint="(`training` takes `VLSFTConfig` fields)")
        training[key] = coerce(value, hints[key], f"training.{key}")
    return training


def training_field_types() -> dict[str, Any]:
    """`VLSFTConfig` init fields and their types (imports TRL, hence lazily)."""
    from vlsft.config import VLSFTConfig

    hints = typing.get_type_hints(VLSFTConfig)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(VLSFTConfig) if f.init}
