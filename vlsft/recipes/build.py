"""Build every part of a run from a recipe: processor, model (+ LoRA config), datasets, training config, trainer;
then train and save (`run`).

The builders are public, so tools and tests can build any part of a run from a recipe. Models and datasets that a
recipe names by a registered local name (`tiny-qwen3-vl`, `demo-shapes`) come from `vlsft.recipes.registry`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from accelerate.logging import get_logger

from vlsft.recipes.datasets import build_datasets
from vlsft.recipes.family_checks import refuse_unsupported_for_family
from vlsft.recipes.launch import launch_command
from vlsft.recipes.model_source import check_model_source
from vlsft.recipes.registry import build_local_model, is_local_model
from vlsft.recipes.schema import Recipe, RecipeError

# accelerate's logger: a message is emitted on the main process only. `vlsft train` shows vlsft's logs on stderr
# (`vlsft.cli.console_logs`).
logger = get_logger(__name__)

# -- model and processor -----------------------------------------------------------------------------------------


def _torch_dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def build_processor(recipe: Recipe):
    """The model's processor, with the recipe's image-size bounds."""
    model = recipe.model
    check_model_source(model.name_or_path, model.revision)
    if is_local_model(model.name_or_path):
        # The processor `build_model` builds for the same kwargs, without weights (the tiny tokenizers are trained
        # deterministically, so the two match).
        _, processor = build_local_model(model.name_or_path, model.tiny, meta=True)
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
    if is_local_model(spec.name_or_path):
        model, _ = build_local_model(spec.name_or_path, spec.tiny)
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


def lora_targets(recipe: Recipe, model=None) -> str | list[str]:
    from vlsft.model_parts import lora_target_modules

    return recipe.lora.target_modules or lora_target_modules(vision=recipe.lora.vision, model=model)


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
        target_modules=lora_targets(recipe, model),
        modules_to_save=modules_to_save or None,
        bias=lora.bias,
        use_rslora=lora.use_rslora,
        task_type="CAUSAL_LM",
    )


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
    several_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if deepspeed_json is not None and "deepspeed" not in values and not launched_with_deepspeed and (_has_cuda() or several_processes):
        # Launched without the layout's accelerate config (plain `accelerate launch` or torchrun): the Trainer
        # still runs the layout's DeepSpeed stage from the JSON. Without a GPU it runs on DeepSpeed's CPU
        # accelerator over gloo, which needs a process group (several processes).
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
    """The `VLSFTTrainer` for a recipe: config, processor, datasets (every row checked before the model loads),
    model (+ LoRA) and callbacks."""
    from vlsft.trainer import VLSFTTrainer

    if recipe.lora is not None and recipe.lora.load_in_4bit:
        check_qlora_available()
    args = build_training_config(recipe)
    processor = build_processor(recipe)
    # What the family cannot train is refused now, as the dry run refuses it, before any data or weights load.
    refuse_unsupported_for_family(processor, args, recipe)
    # Rank 0 prepares the `datasets` cache first; the other ranks then read it.
    with args.main_process_first(desc="loading datasets"):
        train_dataset, eval_dataset = build_datasets(recipe)
    from vlsft.checked_datasets import check_datasets
    from vlsft.distributed import start_deepspeed_comm

    # Every row is checked before the model loads (minutes for a large model): a bad row fails now, named.
    checked = check_datasets(train_dataset, eval_dataset, processor, args)
    start_deepspeed_comm(args)  # a ZeRO-3 load (`zero.Init`) needs it; on CPU accelerate does not start it
    model = build_model(recipe)
    callbacks = []
    if recipe.data.eval_answer_accuracy:
        from vlsft.answer_eval import AnswerAccuracyCallback

        eval_rows = checked.eval_dataset
        rows = [eval_rows[i] for i in range(min(recipe.data.eval_answer_accuracy, len(eval_rows)))]
        callbacks.append(AnswerAccuracyCallback(rows, processor, every_evaluation=True, image_root=args.image_root))
    return VLSFTTrainer(
        model=model,
        args=args,
        checked_datasets=checked,
        processing_class=processor,
        peft_config=build_peft_config(recipe, model),
        callbacks=callbacks,
    )


def run(recipe: Recipe):
    """Train, then save the model (the adapter with LoRA), the processor and `trainer_state.json`."""
    trainer = build_trainer(recipe)
    _warn_on_layout_mismatch(recipe, trainer)
    trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    if trainer.preemption.stopped_at_step is not None:
        # Stopped by SIGTERM: the checkpoint is the result; saving it as the final model would pass a partial run off
        # as a finished one.
        saved = trainer.args.save_strategy != "no"
        logger.warning(
            f"stopped by SIGTERM at step {trainer.state.global_step}"
            + (f"; checkpoint saved in {trainer.args.output_dir}. Resume with `--resume_from_checkpoint true`." if saved else "; `save_strategy` is 'no', nothing saved.")
        )
        return trainer
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

    from vlsft.distributed import whole_model_build

    # Built whole on this (main) process only: under a live ZeRO-3 config transformers would build it with
    # `zero.Init`, whose collectives wait for ranks that are not building anything.
    with whole_model_build():
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
    if differences:
        logger.warning(
            f"note: this run differs from layout `{layout.strategy}`: {', '.join(differences)}. "
            f"The layout's launch: {launch_command(recipe)}"
        )
