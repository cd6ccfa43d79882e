"""Recipes: one YAML file that says what to train, on what data, with which settings and on which GPU layout.

```yaml
model:
  name_or_path: Qwen/Qwen3-VL-2B-Instruct   # or a local directory, or `tiny-qwen3-vl` (built locally)
  dtype: bfloat16
  freeze_vision_tower: true
  merger_lr: 2.0e-5                         # per-component learning rates (optimizer parameter groups)
lora:                                        # optional; absent = full fine-tune
  r: 16
data:
  train:
    - path: data/train.jsonl                 # Hub name, JSONL / JSON / Parquet file or glob, image folder
      columns: {messages: conversations}     # rename source columns to `messages` / `images` / `image` / `videos` / `tools`
      weight: 2
    - path: HuggingFaceH4/llava-instruct-mix-vsft
      split: train
      rows: 5000
      weight: 1
  eval_fraction: 0.02
training:                                    # any `VLSFTConfig` field
  output_dir: outputs/run
  learning_rate: 1.0e-5
layout:
  strategy: zero3                            # single_gpu | cpu | ddp | zero2 | zero3 | zero3_offload | fsdp2
  gpus_per_node: 8
```

Everything is checked when the recipe loads, before any model or dataset: an unknown key names the closest valid
one, a wrong type names the expected type, and impossible combinations say what to change. `--key value` overrides
(command line) go to the `training` section, or to any dotted path (`--model.dtype float32`, `--data.train.0.rows 100`).

Sections are plain dataclasses; `training` stays a dict until `vlsft.train` builds the `VLSFTConfig`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Names that recipes can use without a Hub download (see `vlsft.train`).
TINY_MODEL = "tiny-qwen3-vl"
DEMO_DATASET = "demo-shapes"

# The accelerate configs shipped in configs/, one per layout strategy.
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
LAYOUTS = {
    "single_gpu": "single_gpu.yaml",
    "cpu": "cpu.yaml",
    "ddp": "ddp.yaml",
    "zero2": "zero2.yaml",
    "zero3": "zero3.yaml",
    "zero3_offload": "zero3_offload.yaml",
    "fsdp2": "fsdp2.yaml",
}
DEEPSPEED_LAYOUTS = {"zero2": "ds_zero2.json", "zero3": "ds_zero3.json", "zero3_offload": "ds_zero3_offload.json"}

DTYPES = ("auto", "bfloat16", "float16", "float32")
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key and says how to fix it."""


# -- schema ------------------------------------------------------------------------------------------------------


@dataclass
class ModelSection:
    """`model:` what to load, what to freeze, and per-component learning rates.

    name_or_path: Hub name, local directory, or `tiny-qwen3-vl` (a tiny random Qwen3-VL built locally; `tiny`
        holds `vlsft.tiny_model.build_tiny_qwen3_vl` keyword arguments, e.g. `{hidden_size: 128, seed: 0}`).
    dtype: weights dtype: auto | bfloat16 | float16 | float32 (aliases bf16, fp16, fp32).
    attn_implementation: e.g. sdpa, eager, flash_attention_2; default: the model's own choice.
    freeze_vision_tower / freeze_merger: no gradients for the ViT / the projector and DeepStack mergers. Default: not
        frozen in a full fine-tune; with LoRA the base weights are frozen anyway, and `freeze_merger: false` trains
        the mergers fully (saved with the adapter).
    vision_tower_lr / merger_lr / language_model_lr: learning rate of that component's parameters (an optimizer
        parameter group each); unset ones use `training.learning_rate`.
    min_pixels / max_pixels: bounds on the resized image area (the processor's `shortest_edge` / `longest_edge`);
        max_pixels is the main memory knob for high-resolution images.
    """

    name_or_path: str
    dtype: str = "auto"
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    revision: str | None = None
    tiny: dict[str, Any] | None = None
    freeze_vision_tower: bool | None = None
    freeze_merger: bool | None = None
    vision_tower_lr: float | None = None
    merger_lr: float | None = None
    language_model_lr: float | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None


@dataclass
class LoraSection:
    """`lora:` LoRA (or QLoRA with `load_in_4bit`) instead of a full fine-tune.

    target_modules: a regex (PEFT full-match on module names) or a list of module-name suffixes. Default: the
        language model's attention and MLP projections, plus the vision blocks' when `vision: true`; never the
        patch-embedding convolution.
    modules_to_save: extra modules trained fully and saved with the adapter.
    load_in_4bit: QLoRA: the base model is loaded 4-bit with bitsandbytes (needs a CUDA GPU and bitsandbytes).
    save_merged: after training, also save base + adapter merged into plain weights in `<output_dir>/merged`.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] | None = None
    vision: bool = False
    modules_to_save: list[str] | None = None
    bias: str = "none"
    use_rslora: bool = False
    load_in_4bit: bool = False
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_use_double_quant: bool = True
    save_merged: bool = False


@dataclass
class DatasetSource:
    """One dataset of `data.train` / `data.eval`.

    path: a `datasets` Hub name, a local .jsonl / .json / .parquet file (or a glob of them), a local directory
        (an image folder with a metadata.jsonl holding `messages`, or data files), or `demo-shapes`.
    name: the Hub dataset's configuration. split: which split (slicing such as `train[:1000]` works).
    columns: `{target: source column}` to rename columns to `messages`, `images`, `image`, `videos`, `tools`.
    image_root: directory that relative image paths resolve against. Default: `training.image_root` if set, else
        the directory of a local data file.
    rows / fraction: keep this many rows / this fraction of the rows (a seeded random sample; at most one of them).
    weight: mixture weight (train sources only; see `DataSection`).
    format: how conversations are stored: `messages` (default, TRL's conversational format), `sharegpt` or `llava`
        (a `conversations` column of `from`/`value` turns, `<image>` markers in the text), converted on load
        (`vlsft.formats`).
    """

    path: str
    name: str | None = None
    split: str = "train"
    revision: str | None = None
    columns: dict[str, str] | None = None
    image_root: str | None = None
    rows: int | None = None
    fraction: float | None = None
    weight: float | None = None
    format: str = "messages"


@dataclass
class DataSection:
    """`data:` the training datasets, the evaluation set, and how they are mixed.

    train: one source or a list of sources.
    eval: explicit evaluation sources, or else `eval_fraction`: that fraction of every train source (after its row
        limit) is held out for evaluation before any mixing, so no evaluation row is ever trained on.
    Mixture: with no `weight` anywhere, every train row is used once. With weights (then every train source needs
        one), the training set has `mixture_rows` rows (default: all train rows together) and source i gives
        round(mixture_rows * weight_i / sum of weights) of them (largest-remainder rounding, so the counts add up):
        its rows in a random order fixed by `seed`, repeated pass after pass when it must give more rows than it
        has, cut short when fewer. The same recipe and seed always give the same rows.
    eval_answer_accuracy: generate answers for this many evaluation rows at every evaluation and log the exact-match
        accuracy (`vlsft.answer_eval.AnswerAccuracyCallback`).
    cache_dir: the `datasets` cache directory.
    """

    train: list[DatasetSource]
    eval: list[DatasetSource] | None = None
    eval_fraction: float | None = None
    mixture_rows: int | None = None
    seed: int = 0
    eval_answer_accuracy: int | None = None
    cache_dir: str | None = None


@dataclass
class LayoutSection:
    """`layout:` where it runs. `strategy` picks the accelerate config in configs/ (`LAYOUTS`); the world size is
    `gpus_per_node * nodes`."""

    strategy: str = "single_gpu"
    gpus_per_node: int = 1
    nodes: int = 1

    @property
    def num_processes(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def accelerate_config(self) -> Path:
        return CONFIGS_DIR / LAYOUTS[self.strategy]

    @property
    def deepspeed_config(self) -> Path | None:
        name = DEEPSPEED_LAYOUTS.get(self.strategy)
        return CONFIGS_DIR / name if name else None


@dataclass
class Recipe:
    model: ModelSection
    data: DataSection
    training: dict[str, Any] = field(default_factory=dict)
    lora: LoraSection | None = None
    layout: LayoutSection = field(default_factory=LayoutSection)
    path: str | None = None  # the YAML file it came from (not a YAML key)

    @property
    def component_learning_rates(self) -> dict[str, float]:
        rates = {
            "vision_tower": self.model.vision_tower_lr,
            "merger": self.model.merger_lr,
            "language_model": self.model.language_model_lr,
        }
        return {component: lr for component, lr in rates.items() if lr is not None}

    @property
    def freeze_vision_tower(self) -> bool:
        """Resolved freeze flag: explicit value, else frozen with LoRA (base weights never train) and trained in a
        full fine-tune."""
        if self.model.freeze_vision_tower is not None:
            return self.model.freeze_vision_tower
        return self.lora is not None

    @property
    def freeze_merger(self) -> bool:
        if self.model.freeze_merger is not None:
            return self.model.freeze_merger
        return self.lora is not None


_SECTIONS = {"model": ModelSection, "data": DataSection, "lora": LoraSection, "layout": LayoutSection}
_TOP_LEVEL = ("model", "data", "training", "lora", "layout")


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
    if parts[0] not in _TOP_LEVEL:
        if len(parts) > 1:
            _unknown(parts[0], _TOP_LEVEL, where="recipe", hint=f"in override --{key}")
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
        raise RecipeError(f"{path}: a recipe is a mapping with sections {list(_TOP_LEVEL)}, got {type(raw).__name__}.")
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
        if key not in _TOP_LEVEL:
            _unknown(key, _TOP_LEVEL, where="recipe")
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
        raise RecipeError(f"`{where}` must be a mapping, got {_describe(value)}.")
    return value


def _build(cls, value: Any, where: str):
    """Instantiate a section dataclass from a mapping, checking keys and types (nested sources included)."""
    value = _as_mapping(value, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            _unknown(key, list(fields), where=where)
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
                raise RecipeError(f"`{where}.{key}` must be a dataset source or a non-empty list of them, got {_describe(item)}.")
            kwargs[key] = [_build(DatasetSource, source, f"{where}.{key}.{i}") for i, source in enumerate(item)]
            continue
        kwargs[key] = _coerce(item, hint, f"{where}.{key}")
    return cls(**kwargs)


def _check_training(training: Any) -> dict[str, Any]:
    """Keys and types of the `training` section against `VLSFTConfig`'s fields. Values are checked for real when
    the config is built (`vlsft.train.build_training_config`)."""
    training = dict(_as_mapping(training, "training"))
    hints = training_field_types()
    for key, value in training.items():
        if key not in hints:
            _unknown(key, list(hints), where="training", hint="(`training` takes `VLSFTConfig` fields)")
        training[key] = _coerce(value, hints[key], f"training.{key}")
    return training


def training_field_types() -> dict[str, Any]:
    """`VLSFTConfig` init fields and their types (imports TRL, hence lazily)."""
    from vlsft.config import VLSFTConfig

    hints = typing.get_type_hints(VLSFTConfig)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(VLSFTConfig) if f.init}


def _check_values(recipe: Recipe) -> None:
    """Value ranges and combinations that types alone do not catch."""
    model, data, lora, layout = recipe.model, recipe.data, recipe.lora, recipe.layout
    dtype = _DTYPE_ALIASES.get(model.dtype, model.dtype)
    if dtype not in DTYPES:
        _unknown(model.dtype, list(DTYPES) + list(_DTYPE_ALIASES), where="model.dtype", what="value")
    model.dtype = dtype
    if model.tiny is not None and model.name_or_path != TINY_MODEL:
        raise RecipeError(f"`model.tiny` only applies to `model.name_or_path: {TINY_MODEL}`.")
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
            _unknown(lora.bias, ["none", "all", "lora_only"], where="lora.bias", what="value")
        if lora.bnb_4bit_quant_type not in ("nf4", "fp4"):
            _unknown(lora.bnb_4bit_quant_type, ["nf4", "fp4"], where="lora.bnb_4bit_quant_type", what="value")
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
        if source.format not in ("messages", "sharegpt", "llava"):
            raise RecipeError(f"`{where}.format` must be one of messages, sharegpt, llava; got {source.format!r}.")
        if source.rows is not None and source.rows < 1:
            raise RecipeError(f"`{where}.rows` must be >= 1, got {source.rows}.")
        if source.fraction is not None and not 0 < source.fraction <= 1:
            raise RecipeError(f"`{where}.fraction` must be in (0, 1], got {source.fraction}.")
        for target in source.columns or {}:
            if target not in ("messages", "images", "image", "videos", "tools"):
                _unknown(target, ["messages", "images", "image", "videos", "tools"], where=f"{where}.columns",
                         what="target column")
        if source.path == DEMO_DATASET and source.rows is None:
            raise RecipeError(f"`{where}`: `{DEMO_DATASET}` is generated; say how many with `rows`.")
        if source.path == DEMO_DATASET and source.fraction is not None:
            raise RecipeError(f"`{where}`: `{DEMO_DATASET}` is generated; use `rows`, not `fraction`.")
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
        _unknown(layout.strategy, list(LAYOUTS), where="layout.strategy", what="value")
    if layout.gpus_per_node < 1 or layout.nodes < 1:
        raise RecipeError("`layout.gpus_per_node` and `layout.nodes` must be >= 1.")
    if layout.strategy in ("single_gpu", "cpu") and layout.num_processes != 1:
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


# -- types -------------------------------------------------------------------------------------------------------


def type_matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a type annotation. Unknown annotation kinds are accepted (the config checks)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(type_matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint) or value in {member.value for member in hint}
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list):
            return False
        args = typing.get_args(hint)
        return not args or args[0] is Ellipsis or all(type_matches(item, args[0]) for item in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return False
        args = typing.get_args(hint)
        return not args or all(type_matches(item, args[1]) for item in value.values())
    return True


def type_name(hint: Any) -> str:
    """A readable name of a type annotation: `float`, `a str or null`, `a list of str`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        names = " or ".join(dict.fromkeys(type_name(arg) for arg in args))
        return names + (" or null" if len(args) < len(typing.get_args(hint)) else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in hint)
    if origin in (list, tuple) or hint in (list, tuple):
        args = typing.get_args(hint)
        plural = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}
        return f"a list of {plural.get(args[0], type_name(args[0]))}" if args else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    if hint is float:
        return "a number"
    if hint is int:
        return "an integer"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` if it fits `hint`, made exact where YAML guessed another scalar type (`revision: 2024` or
    `--output_dir 123` is meant as a string, `alpha: 16` for a float field is 16.0); else a `RecipeError` naming the key and the expected type."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if isinstance(value, bool) and bool not in args and not type_matches(value, hint):
        # YAML 1.1 reads `no`/`yes`/`true`/`false` as booleans: `--save_strategy no` means the strategy "no",
        # `--resume_from_checkpoint true` the string "true" (resume from the newest complete checkpoint).
        enums = [arg for arg in args if isinstance(arg, type) and issubclass(arg, enum.Enum)]
        if value is False and any("no" in {member.value for member in e} for e in enums):
            return "no"
        if str in args:
            return "true" if value else "false"
    if type_matches(value, hint):
        if isinstance(value, int) and not isinstance(value, bool) and float in args and int not in args:
            return float(value)
        return value
    if isinstance(value, int) and not isinstance(value, bool) and str in args:
        return str(value)
    raise RecipeError(f"`{where}` must be {type_name(hint)}, got {_describe(value)}.")


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{kind.get(type(value), type(value).__name__)} ({text})" if value is not None else "null"


def _unknown(key: str, valid: list[str] | tuple[str, ...], where: str, hint: str = "", what: str = "key") -> None:
    close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.6)
    suggestion = f" Did you mean `{close[0]}`?" if close else ""
    if not close and len(valid) <= 12:
        suggestion += f" Valid: {', '.join(map(str, valid))}."
    raise RecipeError(f"unknown {what} `{key}` in `{where}`{(' ' + hint) if hint else ''}.{suggestion}")


# -- derived values ------------------------------------------------------------------------------------------------


def mixture_counts(sizes: list[int], weights: list[float], total: int | None = None) -> list[int]:
    """Rows each source gives a weighted mixture of `total` rows (default: sum of sizes): proportional to the
    weights, rounded by largest remainder so that the counts add up to `total` exactly."""
    total = sum(sizes) if total is None else total
    shares = [total * weight / sum(weights) for weight in weights]
    counts = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: (counts[i] - shares[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def launch_command(recipe: Recipe, recipe_path: str | None = None) -> str:
    """The `accelerate launch` command line that runs this recipe on its layout."""
    layout = recipe.layout
    config = _relative(layout.accelerate_config)
    parts = ["accelerate", "launch", "--config_file", config]
    if layout.strategy == "cpu":
        parts.append("--cpu")
    parts += ["--num_processes", str(layout.num_processes), "--num_machines", str(layout.nodes)]
    if layout.nodes > 1:
        parts += ["--machine_rank", "$NODE_RANK", "--main_process_ip", "$MAIN_HOST", "--main_process_port", "29500"]
    parts += [_relative(Path(__file__).with_name("train.py")), "--config", recipe_path or recipe.path or "RECIPE.yaml"]
    return " ".join(parts)


def _relative(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
