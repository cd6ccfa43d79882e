"""`--dry-run`: the resolved plan of a recipe (model, datasets, batch size, parameter groups, layout, launch
command), printed without loading weights or datasets."""

from __future__ import annotations

import glob
import importlib.util
import json
import os

from vlsft.generic_family import is_generic_family
from vlsft.recipes.build import build_training_config, lora_targets
from vlsft.recipes.datasets import file_extension, looks_local
from vlsft.recipes.family_checks import processor_available_offline, refuse_unsupported_for_family
from vlsft.recipes.launch import LaunchError, check_launchable, has_gpu, launch_argv, launch_command
from vlsft.recipes.mixture import held_out_rows, kept_rows, mixture_counts
from vlsft.recipes.model_source import check_model_source
from vlsft.recipes.memory_estimate import describe_memory_estimate
from vlsft.recipes.model_shapes import meta_model
from vlsft.recipes.registry import is_local_dataset
from vlsft.recipes.schema import DatasetSource, Recipe, RecipeError

# -- dry run -----------------------------------------------------------------------------------------------------


def describe_plan(recipe: Recipe, overrides: list[str] = (), **launch) -> str:
    """The resolved plan of a recipe as text, without loading weights or datasets. `launch` holds the launcher's
    options (`vlsft.recipes.launch.launch_argv`), so the plan shows the exact command `vlsft train` runs."""
    args = build_training_config(recipe, check_only=True)
    # A Hub id is not fetched (a dry run loads nothing); the real run checks the Hub answers before loading.
    source = check_model_source(recipe.model.name_or_path, recipe.model.revision, reach_hub=False)
    resume = _resume_plan(args)
    family, packing = _family_plan(recipe, args)
    lines = [f"recipe     {recipe.path}: valid", ""]
    model = recipe.model
    detail = [f"dtype {model.dtype}"]
    if model.attn_implementation:
        detail.append(f"attention {model.attn_implementation}")
    if model.max_pixels:
        detail.append(f"max_pixels {model.max_pixels}")
    lines.append(f"model      {model.name_or_path} ({source}; {', '.join(detail)})")
    lines.append(f"family     {family}")
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
    model_on_meta, source = meta_model(recipe)
    parameter_lines, counts = _describe_parameters(recipe, args, model_on_meta, source)
    lines += parameter_lines
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
    if packing:
        lines.append(f"packing    {packing}")
    if resume:
        lines.append(f"resume     {resume}")
    lines += describe_memory_estimate(recipe, args, model_on_meta, counts, source)
    layout = recipe.layout
    where = f"{layout.gpus_per_node} GPU(s) per node x {layout.nodes} node(s)" if layout.strategy != "cpu" else "CPU"
    # The shipped files by absolute path: where this installation of vlsft has them.
    config = str(layout.accelerate_config)
    extra = f", DeepSpeed {layout.deepspeed_config}" if layout.deepspeed_config else ""
    lines.append(f"layout     {layout.strategy}: {where} ({config}{extra})")
    lines.append(f"launch     {launch_command(recipe, overrides, **launch)}")
    try:
        check_launchable(recipe)
        if not has_gpu() and "--multi_gpu" in launch_argv(recipe, overrides, placeholders=True, **launch):
            lines.append("           (no GPU here: the layout's CPU equivalent, data parallel over gloo)")
    except LaunchError as error:  # a layout for GPUs only (FSDP): the plan shows its GPU launch, and why not here
        lines.append(f"           (not on this machine: {error})")
    if layout.nodes > 1:
        lines.append("           (run it on every node, with NODE_RANK and MAIN_HOST set there)")
    return "\n".join(lines)


def _family_plan(recipe: Recipe, args) -> tuple[str, str | None]:
    """The model's family, once the settings it cannot train are refused as the run refuses them
    (`refuse_unsupported_for_family`), from the processor when it is available without a download; and the packing
    line (None without packing)."""
    from vlsft.packing import packing_enabled

    packing = None
    if packing_enabled(args):
        packing = f"rows best-fit decreasing into packs of {args.max_length} tokens" if args.packing else "padding-free batches"
    processor = processor_available_offline(recipe)
    if processor is None:
        unknown = "not known here (the processor is not available offline): the run checks it before loading data"
        return unknown, packing and f"{packing} (the model family is checked once the processor loads)"
    family = refuse_unsupported_for_family(processor, args, recipe)
    if packing and is_generic_family(family):
        packing += " (no family record: the language model decides, checked from its config or once it loads)"
    return family.display_name, packing


def _resume_plan(args) -> str | None:
    """The checkpoint a run would resume from, checked as `VLSFTTrainer.train` checks it."""
    from vlsft.checkpoints import CheckpointError, resume_argument

    if args.resume_from_checkpoint is None:
        return None
    try:
        return resume_argument(args.resume_from_checkpoint, args.output_dir, needs_optimizer=not args.save_only_model)
    except CheckpointError as error:
        raise RecipeError(f"`training.resume_from_checkpoint`: {error}") from error


def _describe_parameters(recipe: Recipe, args, model, source: str) -> tuple[list[str], dict | None]:
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
    counts, note = _meta_parameter_counts(recipe, model, source)
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
    return lines, counts


def _meta_parameter_counts(recipe: Recipe, model=None, source: str | None = None):
    """({component: (trainable, total)}, note) counted on the model built on the meta device (no weights, no
    memory; built here unless given with its `source`), or (None, reason) when it could not be built without a
    download."""
    import torch

    from vlsft.model_parts import component_of, lora_matches, merger_module_names, parameter_counts

    if source is None:
        model, source = meta_model(recipe)
    if model is None:
        return None, f"no counts: {source}"
    if recipe.lora is None:
        from vlsft.model_parts import freeze_components

        freeze_components(model, vision_tower=recipe.freeze_vision_tower, merger=recipe.freeze_merger)
        return parameter_counts(model), f"counted on the meta device, {source}"
    totals = {component: total for component, (_, total) in parameter_counts(model).items()}
    trainable = dict.fromkeys(totals, 0)
    targets = lora_targets(recipe)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and lora_matches(targets, name):
            trainable[component_of(name)] += recipe.lora.r * (module.in_features + module.out_features)
    saved = list(recipe.lora.modules_to_save or []) + ([] if recipe.freeze_merger else merger_module_names(model))
    for name, module in model.named_modules():
        if any(name == s or name.endswith("." + s) for s in saved):
            trainable[component_of(name)] += sum(p.numel() for p in module.parameters())
    return {c: (trainable[c], totals[c]) for c in totals}, f"LoRA adapters, counted on the meta device, {source}"


def _describe_data(recipe: Recipe) -> list[str]:
    data = recipe.data
    lines = ["data"]
    sizes = []
    for index, source in enumerate(data.train):
        rows = _source_rows(source)
        kept = None if rows is None else kept_rows(rows, source)
        if kept is not None and data.eval_fraction is not None:
            kept -= held_out_rows(kept, data.eval_fraction)
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


def _source_text(source: DatasetSource, rows: int | None) -> str:
    if is_local_dataset(source.path):
        kind = f"generated here, split {source.split}"
    elif os.path.exists(os.path.expanduser(source.path)) or glob.has_magic(source.path):
        kind = "local"
    elif looks_local(source.path):
        kind = "local, NOT FOUND here"
    else:
        kind = f"Hub, split {source.split}" + (f", config {source.name}" if source.name else "")
    count = f"{rows:,} rows" if rows is not None else "rows counted at load"
    return f"{source.path} ({kind}, {count})"


def _source_rows(source: DatasetSource) -> int | None:
    """Rows of a source, counted cheaply: JSONL lines, Parquet metadata, an image folder's metadata.jsonl. None for
    Hub datasets and anything that would need a full read."""
    if is_local_dataset(source.path):
        return source.rows
    path = os.path.expanduser(source.path)
    if glob.has_magic(path):
        files = sorted(glob.glob(path))
    elif os.path.isdir(path):
        files = [os.path.join(path, "metadata.jsonl")] if os.path.isfile(os.path.join(path, "metadata.jsonl")) else sorted(
            f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True) if file_extension(f) in (".jsonl", ".parquet")
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
    extension = file_extension(path)
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
