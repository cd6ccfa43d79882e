"""The checks a recipe passes when it loads that types alone do not catch: value ranges and combinations of keys,
each failing with a `RecipeError` that names the key and the fix."""

from __future__ import annotations

import re

from vlsft.recipes.layouts import LAYOUTS, SINGLE_PROCESS_LAYOUTS
from vlsft.recipes.registry import is_local_dataset, is_local_model
from vlsft.recipes.schema import DTYPE_ALIASES, DTYPES, SOURCE_COLUMNS, SOURCE_FORMATS, Recipe, RecipeError
from vlsft.recipes.typecheck import unknown_key


def check_values(recipe: Recipe) -> None:
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
            if target == "conversations" and source.format == "messages":
                raise RecipeError(
                    f"`{where}.columns.conversations` names ShareGPT / LLaVA turns, which only `format: sharegpt` or "
                    f"`format: llava` reads; set `{where}.format`, or map a column of TRL messages to `messages`."
                )
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
    _check_sequence_parallel(recipe)


def _check_sequence_parallel(recipe: Recipe) -> None:
    """`training.sequence_parallel_size` (the field itself is checked by `VLSFTConfig`): a DeepSpeed layout whose
    process count it divides, and no evaluation set (not supported under sequence parallelism yet)."""
    size, layout, data = recipe.training.get("sequence_parallel_size", 1), recipe.layout, recipe.data
    if isinstance(size, bool) or not isinstance(size, int) or size <= 1:
        return
    if layout.deepspeed_config is None:
        raise RecipeError(
            f"`training.sequence_parallel_size: {size}` runs on DeepSpeed's engine: use `layout.strategy: zero2`, "
            f"`zero3` or `zero3_offload`, not `{layout.strategy}`."
        )
    if layout.num_processes % size:
        raise RecipeError(
            f"`training.sequence_parallel_size: {size}` must divide the {layout.num_processes} processes of the layout "
            "(`gpus_per_node * nodes`)."
        )
    if data.eval is not None or data.eval_fraction is not None:
        raise RecipeError(
            "Evaluation under `training.sequence_parallel_size > 1` is not supported yet: drop `data.eval` / "
            "`data.eval_fraction` (and `training.eval_strategy`)."
        )
