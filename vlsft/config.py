"""`VLSFTConfig`: TRL's `SFTConfig` plus the few fields vlsft adds, with defaults for vision-language SFT."""

from __future__ import annotations

from dataclasses import dataclass, field

import os

import torch
from trl import SFTConfig


@dataclass
class VLSFTConfig(SFTConfig):
    r"""
    Configuration for [`VLSFTTrainer`]. Every `trl.SFTConfig` / `transformers.TrainingArguments` field keeps working;
    the defaults below differ from TRL's where vision-language SFT needs it.

    Parameters:
        assistant_only_loss (`bool`, defaults to `True`):
            Supervise only the assistant turns (their text, tool calls and end-of-turn token). Prompts, images, system
            and tool outputs are never supervised.
        image_root (`str`, *optional*):
            Directory that relative image paths in the dataset are resolved against.
        invalid_rows (`str`, defaults to `"raise"`):
            What to do with a row that fails validation before training: `"raise"` stops with an error naming every
            bad row, `"skip"` drops the bad rows and logs how many and why.
        validate_rows (`bool`, defaults to `True`):
            Check every train and eval row (images decode, placeholders match images, an assistant turn exists,
            truncation keeps the images and at least one supervised token) before the first step.
        loss_chunk_size (`int`, defaults to `256`):
            Supervised positions projected through the LM head at a time. Each chunk's float32 logits are recomputed
            in the backward pass instead of being stored, so memory stays at a few `[chunk, vocab]` float32 buffers
            (256 x 151,936 x 4 B = 155 MB each for Qwen3-VL), whatever the number of supervised tokens.
        component_learning_rates (`dict[str, float]`, *optional*):
            Learning rates per model component, as optimizer parameter groups: keys `"vision_tower"`, `"merger"`
            (projector and DeepStack mergers), `"language_model"` (see `vlsft.model_parts`). A component left out
            uses `learning_rate`. Recipes set it from `model.vision_tower_lr` / `merger_lr` / `language_model_lr`.
        bf16 (`bool`, *optional*):
            Mixed bf16 precision. Defaults to `True` where a bf16-capable GPU is present, `False` elsewhere (TRL
            defaults to `True` everywhere, which fails on CPU).
    """

    assistant_only_loss: bool = field(
        default=True,
        metadata={"help": "Supervise only the assistant turns; prompts, images and tool outputs are never supervised."},
    )
    image_root: str | None = field(
        default=None, metadata={"help": "Directory that relative image paths in the dataset are resolved against."}
    )
    invalid_rows: str = field(
        default="raise",
        metadata={"help": "'raise' (default): stop on a bad row, naming it. 'skip': drop bad rows and log them."},
    )
    validate_rows: bool = field(
        default=True, metadata={"help": "Validate every train and eval row before the first training step."}
    )
    loss_chunk_size: int = field(
        default=256, metadata={"help": "Supervised positions projected through the LM head at a time."}
    )
    component_learning_rates: dict[str, float] | None = field(
        default=None,
        metadata={"help": "Learning rate per component: vision_tower, merger, language_model (others: learning_rate)."},
    )

    def __post_init__(self):
        if self.invalid_rows not in ("raise", "skip"):
            raise ValueError(f"`invalid_rows` must be 'raise' or 'skip', got {self.invalid_rows!r}.")
        if self.loss_chunk_size < 1:
            raise ValueError(f"`loss_chunk_size` must be >= 1, got {self.loss_chunk_size}.")
        # vlsft's collator renders, tokenizes and masks every row on the fly, so TRL's up-front tokenization is
        # skipped and the raw columns must reach the collator.
        self.dataset_kwargs = {**(self.dataset_kwargs or {}), "skip_prepare_dataset": True}
        self.remove_unused_columns = False
        # TRL turns bf16 on whenever fp16 is off, which fails on a machine without a bf16 GPU. Default to bf16
        # only where it can run; an explicit True/False is kept.
        if self.bf16 is None and not self.fp16:
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        # `accelerate launch --multi_gpu --num_processes N` on a machine without GPUs starts N processes, but
        # accelerate runs them as one-process jobs unless asked for CPU; data parallelism over gloo needs use_cpu.
        # (`accelerate launch --cpu` starts a single process, whatever --num_processes says.)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
            if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
                # accelerate enables its FSDP plugin only for GPU-type runs; on CPU it would train plain DDP.
                raise ValueError(
                    "FSDP needs GPUs: accelerate 1.15 shards with FSDP only on GPU-type devices, and on this CPU the "
                    "run would be unsharded DDP. Use the `ddp`, `zero2` or `zero3` layout here (DeepSpeed runs on the "
                    "CPU over gloo), or run `fsdp2` on GPUs."
                )
            self.use_cpu = True
        super().__post_init__()
