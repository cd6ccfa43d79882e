"""Train a vision-language model from a recipe.

    accelerate launch vlsft/train.py --config recipes/qwen3vl.yaml [--key value ...]
    python -m vlsft.train --config recipes/qwen3vl.yaml
    vlsft train --config recipes/qwen3vl.yaml --dry-run

`--key value` overrides a `training` field (`--output_dir`, `--max_steps`, `--learning_rate`) or any dotted recipe
path (`--model.dtype float32`, `--data.train.0.rows 100`). `--dry-run` validates the recipe and prints the plan
(model, datasets, batch size, parameter groups, layout, launch command) without loading weights.

The builders (`build_processor`, `build_model`, `build_peft_config`, `build_datasets`, `build_training_config`,
`build_trainer`) are public, so tools and tests can build any part of a run from a recipe.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # `accelerate launch vlsft/train.py` runs this file as a script, which puts vlsft/ itself first on sys.path:
    # modules there (inspect.py, ...) would shadow the standard library. Import the package from its parent.
    _package_dir = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _package_dir]
    sys.path.insert(0, os.path.dirname(_package_dir))

import argparse
import glob
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from vlsft.recipe import (
    DEMO_DATASET,
    TINY_MODEL,
    DatasetSource,
    Recipe,
    RecipeError,
    launch_command,
    load_recipe,
    mixture_counts,
)

# Local data files by extension -> the `datasets` packaged builder that reads them.
LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
CONVERSATION_COLUMNS = ("messages", "images", "tools")


# -- model and processor -----------------------------------------------------------------------------------------


def _torch_dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def build_processor(recipe: Recipe):
    """The model's processor, with the recipe's image-size bounds."""
    model = recipe.model
    if model.name_or_path == TINY_MODEL:
        from vlsft.tiny_model import tiny_processor

        processor = tiny_processor(**(model.tiny or {}))  # the tokenizer `build_model` builds for the same kwargs
    else:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(
            model.name_or_path, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    if model.min_pixels is not None or model.max_pixels is not None:
        size = dict(processor.image_processor.size)
        if model.min_pixels is not None:
            size["shortest_edge"] = model.min_pixels
        if model.max_pixels is not None:
            size["longest_edge"] = model.max_pixels
        processor.image_processor.size = size
    return processor


def check_qlora_available() -> None:
    """QLoRA needs bitsandbytes and a CUDA GPU; say so before anything loads."""
    import torch

    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes is not installed (`pip install bitsandbytes`)")
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible")
    if missing:
        raise RuntimeError(
            "QLoRA (`lora.load_in_4bit: true`) loads the base model in 4 bits with bitsandbytes, which cannot run "
            f"here: {'; '.join(missing)}. Run on a CUDA machine with bitsandbytes, or set `lora.load_in_4bit: false` "
            "for plain LoRA."
        )


def build_model(recipe: Recipe, quantize: bool = True):
    """The model, loaded as the recipe says, with frozen components frozen (full fine-tune; with LoRA, PEFT freezes
    every base weight). `quantize=False` loads a QLoRA recipe's base model unquantized (for merging)."""
    spec = recipe.model
    if spec.name_or_path == TINY_MODEL:
        from vlsft.tiny_model import build_tiny_qwen3_vl

        model, _ = build_tiny_qwen3_vl(**(spec.tiny or {}))
        if spec.dtype != "auto":
            model.to(_torch_dtype(spec.dtype))
    else:
        from transformers import AutoModelForImageTextToText

        kwargs: dict[str, Any] = {"dtype": _torch_dtype(spec.dtype), "revision": spec.revision}
        kwargs["trust_remote_code"] = spec.trust_remote_code
        if spec.attn_implementation is not None:
            kwargs["attn_implementation"] = spec.attn_implementation
        if quantize and recipe.lora is not None and recipe.lora.load_in_4bit:
            check_qlora_available()
            kwargs["quantization_config"] = _bnb_config(recipe)
        model = AutoModelForImageTextToText.from_pretrained(spec.name_or_path, **kwargs)
    if recipe.lora is None:
        from vlsft.model_parts import freeze_components

        freeze_components(model, vision_tower=recipe.freeze_vision_tower, merger=recipe.freeze_merger)
    return model


def _bnb_config(recipe: Recipe):
    import torch
    from transformers import BitsAndBytesConfig

    lora = recipe.lora
    compute = torch.float16 if recipe.model.dtype == "float16" else torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=lora.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=lora.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=compute,
    )


def lora_targets(recipe: Recipe) -> str | list[str]:
    from vlsft.model_parts import lora_target_modules

    return recipe.lora.target_modules or lora_target_modules(vision=recipe.lora.vision)


def build_peft_config(recipe: Recipe, model):
    """The `peft.LoraConfig` of a LoRA recipe (None for a full fine-tune). With `freeze_merger: false`, the merger and
    DeepStack mergers are trained fully as `modules_to_save`."""
    if recipe.lora is None:
        return None
    from peft import LoraConfig

    from vlsft.model_parts import merger_module_names

    lora = recipe.lora
    modules_to_save = list(lora.modules_to_save or [])
    if not recipe.freeze_merger:
        modules_to_save += [name for name in merger_module_names(model) if name not in modules_to_save]
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_targets(recipe),
        modules_to_save=modules_to_save or None,
        bias=lora.bias,
        use_rslora=lora.use_rslora,
        task_type="CAUSAL_LM",
    )


# -- datasets ----------------------------------------------------------------------------------------------------


def build_datasets(recipe: Recipe):
    """(train, eval or None) as `datasets.Dataset`s in TRL's conversational format: `messages`, `images` (a list of
    `datasets.Image(decode=False)`: `{"bytes", "path"}` dicts, decoded by the collator), `tools` when any source has
    them, and the extra columns that every source shares.

    Every source goes through `datasets.load_dataset` (Hub name, local file, image folder) except the embedded
    `demo-shapes`. Row limits, the `eval_fraction` hold-out and the weighted mixture are documented on
    `vlsft.recipe.DataSection`; all are seeded by `data.seed`.
    """
    import datasets

    data = recipe.data
    image_root = recipe.training.get("image_root")
    train_parts, eval_parts = [], []
    for index, source in enumerate(data.train):
        dataset = load_source(source, f"data.train.{index}", data.cache_dir, image_root, data.seed)
        dataset = _limit(dataset, source, seed=(data.seed, index, 0))
        if data.eval_fraction is not None:
            dataset, held_out = _hold_out(dataset, data.eval_fraction, (data.seed, index, 1), where=f"data.train.{index}")
            eval_parts.append(held_out)
        train_parts.append(dataset)
    for index, source in enumerate(data.eval or []):
        dataset = load_source(source, f"data.eval.{index}", data.cache_dir, image_root, data.seed)
        eval_parts.append(_limit(dataset, source, seed=(data.seed, 1000 + index, 0)))

    if any(source.weight is not None for source in data.train):
        counts = mixture_counts([len(d) for d in train_parts], [s.weight for s in data.train], data.mixture_rows)
        train_parts = [_resample(d, n, seed=(data.seed, i, 2)) for i, (d, n) in enumerate(zip(train_parts, counts))]
        train_parts = [d for d in train_parts if len(d)]
    train = datasets.concatenate_datasets(_unify(train_parts))
    evaluation = datasets.concatenate_datasets(_unify(eval_parts)) if eval_parts else None
    if len(train) == 0:
        raise RecipeError("the training set is empty after row limits and the evaluation hold-out.")
    return train, evaluation


def load_source(
    source: DatasetSource, where: str, cache_dir: str | None = None, image_root: str | None = None, seed: int = 0
):
    """One source as a `datasets.Dataset` with `messages`, `images` (and `tools` / extra columns if it has them).

    Relative image paths resolve against `source.image_root`; else, when `image_root` (`training.image_root`) is not
    set, against the directory of a local data file. Otherwise they stay relative for the collator's image root.
    """
    if source.path == DEMO_DATASET:
        from vlsft.demo_data import load_demo_split

        dataset = load_demo_split(split=source.split, rows=source.rows, seed=seed, cache_dir=cache_dir)
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
    root = source.image_root or (None if image_root else local_dir)
    return _to_conversational(dataset, where, root)


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
        builder = LOCAL_BUILDERS.get(_extension(files[0]))
        if builder is None:
            raise RecipeError(
                f"`{where}.path`: cannot read {files[0]!r}; local files must be one of {', '.join(LOCAL_BUILDERS)}."
            )
        split_name = re.split(r"[\[+]", source.split)[0]
        dataset = datasets.load_dataset(builder, data_files={split_name: files}, **common)
        return dataset, os.path.dirname(os.path.abspath(files[0]))
    if os.path.isdir(path):
        return datasets.load_dataset(path, **common), os.path.abspath(path)
    if _looks_local(source.path):
        raise RecipeError(f"`{where}.path`: {source.path!r} does not exist.")
    dataset = datasets.load_dataset(source.path, name=source.name, revision=source.revision, **common)
    return dataset, None


def _looks_local(path: str) -> bool:
    """A path meant as a local file (that may be missing), not a Hub name."""
    return path.startswith((".", "/", "~")) or _extension(path) in LOCAL_BUILDERS


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _to_conversational(dataset, where: str, image_root: str | None):
    """Bring a source to the common layout: `images` as a list of undecoded `datasets.Image` values."""
    from datasets import Image, List, Value

    columns = dataset.column_names
    if "messages" not in columns:
        raise RecipeError(
            f"`{where}` has no `messages` column (columns: {columns}). Map one with `columns: {{messages: <column>}}`."
        )
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


def _resolve_image(value, image_root: str | None):
    if isinstance(value, str):
        return {"bytes": None, "path": _join(image_root, value)}
    if isinstance(value, dict) and value.get("path") and not value.get("bytes"):
        return {"bytes": None, "path": _join(image_root, value["path"])}
    return value


def _join(root: str | None, path: str) -> str:
    return os.path.join(root, path) if root and not os.path.isabs(path) else path


def _rng(seed: tuple[int, ...]):
    import numpy as np

    return np.random.default_rng(list(seed))


def _limit(dataset, source: DatasetSource, seed: tuple[int, ...]):
    """Keep `rows` rows or a `fraction` of them: a seeded random sample, in the dataset's order."""
    if source.path == DEMO_DATASET:
        return dataset  # generated with exactly `rows` rows
    size = len(dataset)
    keep = size
    if source.rows is not None:
        keep = min(source.rows, size)
    elif source.fraction is not None:
        keep = max(1, round(size * source.fraction))
    if keep == size:
        return dataset
    return dataset.select(sorted(_rng(seed).permutation(size)[:keep].tolist()))


def _hold_out(dataset, fraction: float, seed: tuple[int, ...], where: str):
    size = len(dataset)
    held = max(1, round(size * fraction))
    if held >= size:
        raise RecipeError(f"`data.eval_fraction` {fraction} of `{where}` ({size} rows) leaves nothing to train on.")
    order = _rng(seed).permutation(size).tolist()
    return dataset.select(sorted(order[held:])), dataset.select(sorted(order[:held]))


def _resample(dataset, count: int, seed: tuple[int, ...]):
    """`count` rows of `dataset` for a weighted mixture: seeded random order, whole passes repeated when upsampling."""
    size = len(dataset)
    if size == 0:
        return dataset
    rng = _rng(seed)
    indices: list[int] = []
    while len(indices) < count:
        indices.extend(rng.permutation(size).tolist())
    return dataset.select(indices[:count])


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


# -- training config and trainer ---------------------------------------------------------------------------------


def training_values(recipe: Recipe) -> dict[str, Any]:
    """The `VLSFTConfig` keyword arguments of a recipe: its `training` section, the per-component learning rates,
    a default `output_dir`, and the layout's DeepSpeed config when the launch did not bring one."""
    values = dict(recipe.training)
    if recipe.component_learning_rates:
        values["component_learning_rates"] = recipe.component_learning_rates
    if values.get("output_dir") is None:
        values["output_dir"] = os.path.join("outputs", Path(recipe.path or "run").stem)
    deepspeed_json = recipe.layout.deepspeed_config
    launched_with_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if deepspeed_json is not None and "deepspeed" not in values and not launched_with_deepspeed and _has_cuda():
        # Launched without the layout's accelerate config (plain `accelerate launch` or torchrun): the Trainer
        # still runs the layout's DeepSpeed stage from the JSON.
        values["deepspeed"] = str(deepspeed_json)
    return values


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_training_config(recipe: Recipe, check_only: bool = False):
    """The `VLSFTConfig` of a recipe. `check_only` builds it on any machine, to check values only (a bf16 recipe
    written for GPUs is valid on a CPU-only laptop)."""
    from vlsft.config import VLSFTConfig

    values = training_values(recipe)
    if check_only:
        values.pop("deepspeed", None)
        if not _has_cuda():
            values["use_cpu"] = True
    try:
        return VLSFTConfig(**values)
    except (ValueError, TypeError) as error:
        raise RecipeError(f"`training`: {error}") from error


def build_trainer(recipe: Recipe):
    """The `VLSFTTrainer` for a recipe: config, processor, datasets, model (+ LoRA) and callbacks."""
    from vlsft.trainer import VLSFTTrainer

    if recipe.lora is not None and recipe.lora.load_in_4bit:
        check_qlora_available()
    args = build_training_config(recipe)
    processor = build_processor(recipe)
    # Rank 0 prepares the `datasets` cache first; the other ranks then read it.
    with args.main_process_first(desc="loading datasets"):
        train_dataset, eval_dataset = build_datasets(recipe)
    model = build_model(recipe)
    callbacks = []
    if recipe.data.eval_answer_accuracy:
        from vlsft.answer_eval import AnswerAccuracyCallback

        rows = [eval_dataset[i] for i in range(min(recipe.data.eval_answer_accuracy, len(eval_dataset)))]
        callbacks.append(AnswerAccuracyCallback(rows, processor, every_evaluation=True, image_root=args.image_root))
    return VLSFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        peft_config=build_peft_config(recipe, model),
        callbacks=callbacks,
    )


def run(recipe: Recipe):
    """Train, then save the model (the adapter with LoRA), the processor and `trainer_state.json`."""
    trainer = build_trainer(recipe)
    _warn_on_layout_mismatch(recipe, trainer)
    trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_state()
    if recipe.lora is not None and recipe.lora.save_merged:
        trainer.accelerator.wait_for_everyone()
        if trainer.accelerator.is_main_process:
            merge_adapter(recipe, trainer.args.output_dir, os.path.join(trainer.args.output_dir, "merged"))
    return trainer


def merge_adapter(recipe: Recipe, adapter_dir: str, output_dir: str) -> str:
    """Load the base model unquantized, apply the saved adapter, merge it into the weights and save model and
    processor to `output_dir` (loadable without PEFT)."""
    from peft import PeftModel

    base = build_model(recipe, quantize=False)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(output_dir)
    build_processor(recipe).save_pretrained(output_dir)
    return output_dir


def _warn_on_layout_mismatch(recipe: Recipe, trainer) -> None:
    """A note (not an error: tests and debugging runs are often smaller) when the run differs from the recipe's
    layout in process count or sharding."""
    accelerator, layout = trainer.accelerator, recipe.layout
    differences = []
    if accelerator.num_processes != layout.num_processes:
        differences.append(f"{accelerator.num_processes} process(es) instead of {layout.num_processes}")
    sharding = "deepspeed" if layout.deepspeed_config else "fsdp" if layout.strategy == "fsdp2" else None
    running = "deepspeed" if trainer.is_deepspeed_enabled else "fsdp" if trainer.is_fsdp_enabled else None
    if sharding != running:
        differences.append(f"{running or 'no sharding'} instead of {sharding or 'no sharding'}")
    if differences and accelerator.is_main_process:
        print(
            f"[vlsft] note: this run differs from layout `{layout.strategy}`: {', '.join(differences)}. "
            f"The layout's launch: {launch_command(recipe)}",
            file=sys.stderr,
        )


# -- dry run -----------------------------------------------------------------------------------------------------


def describe_plan(recipe: Recipe, overrides: list[str] = ()) -> str:
    """The resolved plan of a recipe as text, without loading weights or datasets."""
    args = build_training_config(recipe, check_only=True)
    lines = [f"recipe     {recipe.path}: valid", ""]
    model = recipe.model
    detail = [f"dtype {model.dtype}"]
    if model.attn_implementation:
        detail.append(f"attention {model.attn_implementation}")
    if model.max_pixels:
        detail.append(f"max_pixels {model.max_pixels}")
    lines.append(f"model      {model.name_or_path} ({', '.join(detail)})")
    lora = recipe.lora
    if lora is None:
        lines.append("method     full fine-tune")
    else:
        kind = f"QLoRA (4-bit {lora.bnb_4bit_quant_type} base)" if lora.load_in_4bit else "LoRA"
        where = "custom target_modules" if lora.target_modules else (
            "language model + vision blocks" if lora.vision else "language model"
        )
        lines.append(f"method     {kind} r={lora.r} alpha={lora.alpha} dropout={lora.dropout} on {where}")
        if lora.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
            lines.append("           (bitsandbytes is not installed here: training needs it and a CUDA GPU)")
    lines += _describe_parameters(recipe, args)
    lines += _describe_data(recipe)
    world = recipe.layout.num_processes
    per_device, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    lines.append(
        f"batch      {per_device} per device x {accumulation} accumulation x {world} process(es) = "
        f"{per_device * accumulation * world} rows per optimizer step"
    )
    steps = f"max_steps {args.max_steps}" if args.max_steps and args.max_steps > 0 else f"{args.num_train_epochs:g} epoch(s)"
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    lines.append(
        f"training   {steps}, lr {args.learning_rate:g} ({args.lr_scheduler_type.value if hasattr(args.lr_scheduler_type, 'value') else args.lr_scheduler_type}), "
        f"{precision}, activation checkpointing {'on' if args.gradient_checkpointing else 'off'}, output {args.output_dir}"
    )
    layout = recipe.layout
    where = f"{layout.gpus_per_node} GPU(s) per node x {layout.nodes} node(s)" if layout.strategy != "cpu" else "CPU"
    config = os.path.relpath(layout.accelerate_config)
    extra = f", DeepSpeed {os.path.relpath(layout.deepspeed_config)}" if layout.deepspeed_config else ""
    lines.append(f"layout     {layout.strategy}: {where} ({config}{extra})")
    command = launch_command(recipe)
    if overrides:
        command += " " + " ".join(_quote(arg) for arg in overrides)
    lines.append(f"launch     {command}")
    return "\n".join(lines)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _describe_parameters(recipe: Recipe, args) -> list[str]:
    """Trainable parameters and learning rate per component, counted on a meta-device model when the model's config
    is available without a download."""
    from vlsft.model_parts import COMPONENTS

    rates = dict(args.component_learning_rates or {})
    lora = recipe.lora
    # Whether each component trains, from the recipe alone (used when the model cannot be counted).
    trains = {
        "vision_tower": not recipe.freeze_vision_tower if lora is None else (None if lora.target_modules else lora.vision),
        "merger": not recipe.freeze_merger,
        "language_model": True,
    }
    counts, note = _meta_parameter_counts(recipe)
    lines = ["parameters (trainable / total, learning rate)" + (f" [{note}]" if note else "")]
    for component in COMPONENTS:
        if counts is not None:
            trainable, total = counts[component]
            amount = f"{_human(trainable)} / {_human(total)}"
            trains[component] = trainable > 0
        else:
            amount = "?"
        how = "" if lora is None or component == "merger" and trains[component] else " (LoRA adapters)"
        if trains[component] is None:
            rate = f"lr {rates.get(component, args.learning_rate):g} where target_modules match"
        elif trains[component]:
            rate = f"lr {rates.get(component, args.learning_rate):g}{how}"
        else:
            rate = "frozen"
        lines.append(f"  {component:<15} {amount:>20}  {rate}")
    return lines


def _meta_parameter_counts(recipe: Recipe):
    """({component: (trainable, total)}, note) from a model built on the meta device (no weights, no memory), or
    (None, reason) when the config cannot be read without a download."""
    import torch

    from vlsft.model_parts import component_of, merger_module_names, parameter_counts

    try:
        if recipe.model.name_or_path == TINY_MODEL:
            from vlsft.tiny_model import build_tiny_qwen3_vl

            with torch.device("meta"):
                model, _ = build_tiny_qwen3_vl(**(recipe.model.tiny or {}))
        else:
            from transformers import AutoConfig, AutoModelForImageTextToText

            name = recipe.model.name_or_path
            config = AutoConfig.from_pretrained(
                name,
                revision=recipe.model.revision,
                trust_remote_code=recipe.model.trust_remote_code,
                local_files_only=not os.path.isdir(name),
            )
            with torch.device("meta"):
                model = AutoModelForImageTextToText.from_config(config, trust_remote_code=recipe.model.trust_remote_code)
    except Exception as error:  # offline without a cached config, a custom architecture, ...
        return None, f"no counts: the model config is not available offline ({type(error).__name__})"
    if recipe.lora is None:
        from vlsft.model_parts import freeze_components

        freeze_components(model, vision_tower=recipe.freeze_vision_tower, merger=recipe.freeze_merger)
        return parameter_counts(model), "counted on the meta device"
    totals = {component: total for component, (_, total) in parameter_counts(model).items()}
    trainable = dict.fromkeys(totals, 0)
    targets = lora_targets(recipe)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and _lora_matches(targets, name):
            trainable[component_of(name)] += recipe.lora.r * (module.in_features + module.out_features)
    saved = list(recipe.lora.modules_to_save or []) + ([] if recipe.freeze_merger else merger_module_names(model))
    for name, module in model.named_modules():
        if any(name == s or name.endswith("." + s) for s in saved):
            trainable[component_of(name)] += sum(p.numel() for p in module.parameters())
    return {c: (trainable[c], totals[c]) for c in totals}, "LoRA adapters, counted on the meta device"


def _lora_matches(targets: str | list[str], name: str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _describe_data(recipe: Recipe) -> list[str]:
    data = recipe.data
    lines = ["data"]
    sizes = []
    for index, source in enumerate(data.train):
        rows = _source_rows(source)
        kept = _limited(rows, source)
        if kept is not None and data.eval_fraction is not None:
            kept -= max(1, round(kept * data.eval_fraction))
        sizes.append(kept)
        text = f"  train.{index}  {_source_text(source, rows)}"
        if kept is not None and kept != rows:
            text += f" -> {kept:,} rows"
        if source.weight is not None:
            text += f", weight {source.weight:g}"
        lines.append(text)
    if any(s.weight is not None for s in data.train):
        if all(size is not None for size in sizes):
            counts = mixture_counts(sizes, [s.weight for s in data.train], data.mixture_rows)
            lines.append(f"  mixture  {sum(counts):,} rows: " + ", ".join(f"train.{i} {c:,}" for i, c in enumerate(counts)))
        else:
            lines.append("  mixture  weighted; row counts known once the Hub datasets load")
    elif all(size is not None for size in sizes):
        lines.append(f"  train    {sum(sizes):,} rows")
    if data.eval_fraction is not None:
        lines.append(f"  eval     {data.eval_fraction:g} of each train source, held out before mixing")
    for index, source in enumerate(data.eval or []):
        rows = _source_rows(source)
        lines.append(f"  eval.{index}   {_source_text(source, rows)}")
    if data.eval is None and data.eval_fraction is None:
        lines.append("  eval     none")
    if data.eval_answer_accuracy:
        lines.append(f"  answer accuracy on {data.eval_answer_accuracy} eval rows at each evaluation")
    return lines


def _limited(rows: int | None, source: DatasetSource) -> int | None:
    if rows is None:
        return None
    if source.rows is not None:
        return min(source.rows, rows)
    if source.fraction is not None:
        return max(1, round(rows * source.fraction))
    return rows


def _source_text(source: DatasetSource, rows: int | None) -> str:
    if source.path == DEMO_DATASET:
        kind = f"embedded demo, split {source.split}"
    elif os.path.exists(os.path.expanduser(source.path)) or glob.has_magic(source.path):
        kind = "local"
    elif _looks_local(source.path):
        kind = "local, NOT FOUND here"
    else:
        kind = f"Hub, split {source.split}" + (f", config {source.name}" if source.name else "")
    count = f"{rows:,} rows" if rows is not None else "rows counted at load"
    return f"{source.path} ({kind}, {count})"


def _source_rows(source: DatasetSource) -> int | None:
    """Rows of a source, counted cheaply: JSONL lines, Parquet metadata, an image folder's metadata.jsonl. None for
    Hub datasets and anything that would need a full read."""
    if source.path == DEMO_DATASET:
        return source.rows
    path = os.path.expanduser(source.path)
    if glob.has_magic(path):
        files = sorted(glob.glob(path))
    elif os.path.isdir(path):
        files = [os.path.join(path, "metadata.jsonl")] if os.path.isfile(os.path.join(path, "metadata.jsonl")) else sorted(
            f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True) if _extension(f) in (".jsonl", ".parquet")
        )
    elif os.path.isfile(path):
        files = [path]
    else:
        return None
    if not files or "[" in source.split:
        return None
    total = 0
    for file in files:
        count = _file_rows(file)
        if count is None:
            return None
        total += count
    return total


def _file_rows(path: str) -> int | None:
    extension = _extension(path)
    if extension == ".jsonl":
        with open(path, "rb") as file:
            return sum(1 for line in file if line.strip())
    if extension == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if extension == ".json":
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
        return len(content) if isinstance(content, list) else None
    return None


def _human(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


# -- command line ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vlsft train",
        description="Fine-tune a vision-language model from a recipe. Extra `--key value` pairs override the "
        "recipe: a `training` field (`--max_steps 10`) or a dotted path (`--model.dtype float32`).",
    )
    parser.add_argument("--config", required=True, help="the recipe YAML file")
    parser.add_argument("--dry-run", "--dry_run", action="store_true", help="validate and print the plan; load nothing")
    args, overrides = parser.parse_known_args(argv)
    try:
        recipe = load_recipe(args.config, overrides)
        if args.dry_run:
            print(describe_plan(recipe, overrides))
            return 0
        return run_reporting_bad_rows(recipe)
    except RecipeError as error:  # also raised while loading data: a column or file the recipe names is missing
        print(f"vlsft: invalid recipe: {error}", file=sys.stderr)
        return 2


def run_reporting_bad_rows(recipe: Recipe) -> int:
    from vlsft.validation import InvalidRowsError  # imports torch and datasets: only once a run really starts

    try:
        run(recipe)
    except InvalidRowsError as error:  # every bad row is named in the message; a traceback adds nothing
        print(f"vlsft: {error}\nFix these rows, or drop them with `--invalid_rows skip`.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
