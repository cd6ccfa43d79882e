"""Reading a recipe: YAML, `--key value` overrides, and every check that runs when a recipe loads, before any model
or dataset (the sections themselves are in `vlsft.recipes.schema`)."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from typing import Any

import yaml

from vlsft.recipes.layouts import LAYOUTS, SINGLE_PROCESS_LAYOUTS
from vlsft.recipes.registry import is_local_dataset, is_local_model
from vlsft.recipes.schema import DTYPE_ALIASES, DTYPES, SOURCE_COLUMNS, SOURCE_FORMATS, TOP_LEVEL, DataSection, DatasetSource, LayoutSection, LoraSection, ModelSection, Recipe, RecipeError
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
    _check_values(recipe)
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



def _check_values(recipe: Recipe) -> None:
    """Value ranges and combinations that types alone do not catch."""
    model, data, lora, layout = recipe.model, recipe.data, recipe.lora, recipe.layout
    dtype = DTYPE_ALIASES.get(model.dtype, model.dtype)
    if dtype not in DTYPES:
        unknown_key(model.dtype, list(DTYPES) + list(DTYPE_ALIASES), where="model.dtype", what="value")
    model.dtype = dtype
    if model.tiny is not None and not is_local_model(model.name_or_path):
        raise RecipeError(
            "`model.tiny` holds the builder arguments of a model built locally (`tiny-qwen3-vl`, ... see "
            f"`vlsft.recipes.registry`); {model.name_or_path!r} is loaded, so remove `model.tiny`."
        )
    for component, lr in recipe.component_learning_rates.items():
        if lr < 0:
            raise RecipeError(f"`model.{component}_lr` must be >= 0, got {lr}.")
    if recipe.freeze_vision_tower and model.vision_tower_lr is not None:
        raise RecipeError("`model.vision_tower_lr` is set but the vision tower is frozen; set `freeze_vision_tower: false`.")
    if recipe.freeze_merger and model.merger_lr is not None:
        raise RecipeError("`model.merger_lr` is set but the merger is frozen; set `freeze_merger: false`.")
    if recipe.component_learning_rates and "component_learning_rates" in recipe.training:
        raise RecipeError("set per-component learning rates either as `model.*_lr` or as `training.component_learning_rates`, not both.")
    for key in ("min_pixels", "max_pixels"):
        if getattr(model, key) is not None and getattr(model, key) <= 0:
            raise RecipeError(f"`model.{key}` must be > 0.")

    if lora is not None:
        if lora.r < 1:
            raise RecipeError(f"`lora.r` must be >= 1, got {lora.r}.")
        if not 0 <= lora.dropout < 1:
            raise RecipeError(f"`lora.dropout` must be in [0, 1), got {lora.dropout}.")
        if model.freeze_vision_tower is False:
            raise RecipeError(
                "with `lora`, the vision tower's base weights stay frozen: remove `model.freeze_vision_tower: false` "
                "and set `lora.vision: true` to put adapters on the vision blocks (or drop `lora` for a full fine-tune)."
            )
        if model.vision_tower_lr is not None and not lora.vision:
            raise RecipeError("`model.vision_tower_lr` with `lora` needs `lora.vision: true` (adapters on the vision blocks).")
        if lora.bias not in ("none", "all", "lora_only"):
            unknown_key(lora.bias, ["none", "all", "lora_only"], where="lora.bias", what="value")
        if lora.bnb_4bit_quant_type not in ("nf4", "fp4"):
            unknown_key(lora.bnb_4bit_quant_type, ["nf4", "fp4"], where="lora.bnb_4bit_quant_type", what="value")
        if isinstance(lora.target_modules, str):
            try:
                re.compile(lora.target_modules)
            except re.error as error:
                raise RecipeError(f"`lora.target_modules` is not a valid regex: {error}.") from None

    sources = [(f"data.train.{i}", s) for i, s in enumerate(data.train)]
    sources += [(f"data.eval.{i}", s) for i, s in enumerate(data.eval or [])]
    for where, source in sources:
        if source.rows is not None and source.fraction is not None:
            raise RecipeError(f"`{where}`: set `rows` or `fraction`, not both.")
        if source.format not in SOURCE_FORMATS:
            raise RecipeError(f"`{where}.format` must be one of messages, sharegpt, llava; got {source.format!r}.")
        if source.rows is not None and source.rows < 1:
            raise RecipeError(f"`{where}.rows` must be >= 1, got {source.rows}.")
        if source.fraction is not None and not 0 < source.fraction <= 1:
            raise RecipeError(f"`{where}.fraction` must be in (0, 1], got {source.fraction}.")
        for target in source.columns or {}:
            if target not in SOURCE_COLUMNS:
                unknown_key(target, SOURCE_COLUMNS, where=f"{where}.columns",
                         what="target column")
        if is_local_dataset(source.path) and source.rows is None:
            raise RecipeError(f"`{where}`: `{source.path}` is generated; say how many with `rows`.")
        if is_local_dataset(source.path) and source.fraction is not None:
            raise RecipeError(f"`{where}`: `{source.path}` is generated; use `rows`, not `fraction`.")
        if where.startswith("data.eval") and source.weight is not None:
            raise RecipeError(f"`{where}.weight`: mixture weights apply to train sources only.")
    weights = [source.weight for source in data.train]
    if any(w is not None for w in weights):
        if any(w is None for w in weights):
            index = weights.index(None)
            raise RecipeError(f"`data.train.{index}` has no `weight`: once one train source has a weight, all need one.")
        if any(w <= 0 for w in weights):
            raise RecipeError("mixture weights must be > 0.")
    elif data.mixture_rows is not None:
        raise RecipeError("`data.mixture_rows` needs a `weight` on every train source.")
    if data.mixture_rows is not None and data.mixture_rows < 1:
        raise RecipeError("`data.mixture_rows` must be >= 1.")
    if data.eval is not None and data.eval_fraction is not None:
        raise RecipeError("set `data.eval` or `data.eval_fraction`, not both.")
    if data.eval_fraction is not None and not 0 < data.eval_fraction < 1:
        raise RecipeError(f"`data.eval_fraction` must be in (0, 1), got {data.eval_fraction}.")
    if data.eval_answer_accuracy is not None:
        if data.eval_answer_accuracy < 1:
            raise RecipeError("`data.eval_answer_accuracy` must be >= 1 (rows).")
        if data.eval is None and data.eval_fraction is None:
            raise RecipeError("`data.eval_answer_accuracy` needs an evaluation set: `data.eval` or `data.eval_fraction`.")

    if layout.strategy not in LAYOUTS:
        unknown_key(layout.strategy, list(LAYOUTS), where="layout.strategy", what="value")
    if layout.gpus_per_node < 1 or layout.nodes < 1:
        raise RecipeError("`layout.gpus_per_node` and `layout.nodes` must be >= 1.")
    if layout.strategy in SINGLE_PROCESS_LAYOUTS and layout.num_processes != 1:
        raise RecipeError(
            f"`layout.strategy: {layout.strategy}` runs one process; for {layout.num_processes} use `ddp`, `zero2`, "
            "`zero3`, `zero3_offload` or `fsdp2`."
        )
    if lora is not None and lora.load_in_4bit and layout.strategy in ("zero3", "zero3_offload", "fsdp2"):
        raise RecipeError(
            f"QLoRA (`lora.load_in_4bit`) keeps a 4-bit base model on every GPU; use `single_gpu`, `ddp` or `zero2` "
            f"instead of `{layout.strategy}`."
        )
    eval_strategy = str(recipe.training.get("eval_strategy", "no"))
    if eval_strategy != "no" and data.eval is None and data.eval_fraction is None:
        raise RecipeError(f"`training.eval_strategy: {eval_strategy}` needs `data.eval` or `data.eval_fraction`.")

