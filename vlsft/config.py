"""`VLSFTConfig`: TRL's `SFTConfig` plus the few fields vlsft adds, with defaults for vision-language SFT."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import math
import os

import torch
from transformers import TrainingArguments
from trl import SFTConfig
from trl.trainer.utils import get_config_model_id

from vlsft.activation_checkpointing import check_checkpointing_kwargs
from vlsft.collation.template_kwargs import KNOWN_BOOLEAN_SWITCHES, template_kwargs_problems
from vlsft.liger import liger_layer_kernels
from vlsft.packing import packing_enabled


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
        escape_control_tokens (`bool`, defaults to `False`):
            Text in a message that spells out one of the tokenizer's control tokens (`<|im_end|>`, `<end_of_turn>`,
            `<image>`...) would be tokenized as that token and, in an answer, teach the model to end its turn or open
            a fake one mid-answer. By default such a row is a bad row (`row N: message 3 contains the control token
            <|im_end|>`); `True` trains on that text as plain text instead (tokenized so that no control token forms).
        allow_truncated_end_of_turn (`bool`, defaults to `False`):
            With `max_length`, a row whose final end-of-turn token (`<|im_end|>`) is cut would teach the model never
            to stop; by default it is a bad row. `True` trains on the truncated row anyway. Validation reports, either
            way, how many rows truncation cuts and how many supervised tokens it removes.
        loss_chunk_size (`int`, defaults to `256`):
            Supervised positions projected through the LM head at a time. Each chunk's float32 logits are recomputed
            in the backward pass instead of being stored, so memory stays at a few `[chunk, vocab]` float32 buffers
            (256 x 151,936 x 4 B = 155 MB each for Qwen3-VL), whatever the number of supervised tokens.
        component_learning_rates (`dict[str, float]`, *optional*):
            Learning rates per model component, as optimizer parameter groups: keys `"vision_tower"`, `"merger"`
            (projector and DeepStack mergers), `"language_model"` (see `vlsft.model_parts`). A component left out
            uses `learning_rate`. Recipes set it from `model.vision_tower_lr` / `merger_lr` / `language_model_lr`.
        packing (`bool`, defaults to `False`), packing_strategy (`str`, defaults to `"bfd"`), padding_free (`bool`):
            TRL's fields, with TRL's meaning, for vision-language rows (`vlsft.packing`): `packing` places whole rows
            best-fit decreasing into sequences of at most `max_length` tokens (image tokens counted);
            `padding_free` lays each micro-batch's rows end to end in one sequence without padding (implied by
            `packing`). Each row keeps its own (3D mRoPE) positions and never attends to another; the loss is
            unchanged. Only `packing_strategy="bfd"`; with `attn_implementation` "sdpa", "eager", "flex_attention" or a
            flash attention ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn2").
        resume_with_new_pack_plan (`bool`, defaults to `False`):
            A checkpoint records its run's pack plan; resuming it with another one (another `max_length`, dataset,
            `seed` or `packing`) is refused, as the checkpoint's step counts packs of its own plan. `True` resumes on
            the new plan anyway, with a warning: in the current epoch some rows are then trained again, others not.
        loss_type (`str`, defaults to `"nll"`):
            TRL's field: `"nll"`, the summed negative log-likelihood of the supervised tokens over the step's
            supervised tokens; `"dft"` (Dynamic Fine-Tuning, TRL's meaning): each supervised token's NLL weighted by
            its own probability (not differentiated through), on the same supervised tokens and divisor.
        sequence_parallel_size (`int`, defaults to `1`):
            Ranks that split one sequence (Ulysses sequence parallelism through DeepSpeed's all-to-all attention,
            `vlsft.sequence_parallel`): the N ranks of a group train the same rows, each running the language model
            on 1/N of the sequence; the vision tower runs whole on each. Must divide the number of processes; needs a
            DeepSpeed layout and Qwen3-VL; refused with packing. The loss is that of one process.
        bf16 (`bool`, *optional*):
            Mixed bf16 precision. Defaults to `True` where the run uses a bf16-capable GPU, `False` elsewhere and
            with `use_cpu=True` (TRL defaults to `True` everywhere, which fails on CPU).
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
    escape_control_tokens: bool = field(
        default=False,
        metadata={"help": "Tokenize control-token text inside messages as plain text instead of refusing the row."},
    )
    allow_truncated_end_of_turn: bool = field(
        default=False,
        metadata={"help": "Train on rows whose final end-of-turn token max_length cuts (bad rows by default)."},
    )
    loss_chunk_size: int = field(
        default=256, metadata={"help": "Supervised positions projected through the LM head at a time."}
    )
    component_learning_rates: dict[str, float] | None = field(
        default=None,
        metadata={"help": "Learning rate per component: vision_tower, merger, language_model (others: learning_rate)."},
    )
    chat_template_kwargs: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Chat template variables for every row (enable_thinking, preserve_thinking, reasoning_effort...)."},
    )
    reasoning_history: str = field(
        default="drop",
        metadata={"help": "'drop' (default): history reasoning as the stock template renders it, only final turns "
                  "trained. 'keep': every turn rendered with its reasoning and trained."},
    )

    train_on_turns: Literal["all", "last"] = field(
        default="all",
        metadata={"help": "'all' (default): every assistant turn trains. 'last': only the final assistant turn."},
    )
    train_on_eos: bool = field(
        default=True, metadata={"help": "Supervise the end-of-turn token of each trained assistant turn."}
    )
    reasoning_weight: float = field(
        default=1.0, metadata={"help": "Loss weight of a trained turn's reasoning tokens (<think>...</think>)."}
    )
    video_root: str | None = field(
        default=None, metadata={"help": "Directory that relative video paths are resolved against (default: image_root)."}
    )
    video_fps: float | None = field(
        default=None, metadata={"help": "Frames per second sampled from each video (default: the processor's own)."}
    )
    video_min_frames: int | None = field(
        default=None, metadata={"help": "Fewest frames sampled per video (default: the processor's own)."}
    )
    video_max_frames: int | None = field(
        default=None, metadata={"help": "Most frames sampled per video (default: the processor's own)."}
    )
    video_max_pixels: int | None = field(
        default=None, metadata={"help": "Video pixel budget, the video processor's size['longest_edge']."}
    )
    resume_with_new_pack_plan: bool = field(
        default=False,
        metadata={"help": "Resume a checkpoint whose pack plan differs from this run's (refused by default)."},
    )
    sequence_parallel_size: int = field(
        default=1,
        metadata={"help": "Ranks that split one sequence (Ulysses, DeepSpeed layouts, Qwen3-VL); divides the world size."},
    )

    def __post_init__(self):
        if self.reasoning_history not in ("drop", "keep"):
            raise ValueError(f"`reasoning_history` must be 'drop' or 'keep', got {self.reasoning_history!r}.")
        if self.chat_template_kwargs is not None and not isinstance(self.chat_template_kwargs, dict):
            raise ValueError(f"`chat_template_kwargs` must be a dict, got {type(self.chat_template_kwargs).__name__}.")
        # Before anything loads: the switches of the templates vlsft ships (the collator checks its own template's).
        problems = template_kwargs_problems(self.chat_template_kwargs, KNOWN_BOOLEAN_SWITCHES, "chat_template_kwargs")
        if problems:
            raise ValueError("; ".join(problems) + ".")
        if self.train_on_turns not in ("all", "last"):
            raise ValueError(f"`train_on_turns` must be 'all' or 'last', got {self.train_on_turns!r}.")
        if isinstance(self.reasoning_weight, bool) or not isinstance(self.reasoning_weight, (int, float)) or not (
            0 <= self.reasoning_weight < float("inf")
        ):
            raise ValueError(f"`reasoning_weight` must be a finite number >= 0, got {self.reasoning_weight!r}.")
        if not self.assistant_only_loss and (
            self.train_on_turns != "all" or not self.train_on_eos or self.reasoning_weight != 1
        ):
            raise ValueError(
                "`train_on_turns`, `train_on_eos` and `reasoning_weight` select assistant tokens and need "
                "`assistant_only_loss=True`."
            )
        self._check_ranges()
        if not isinstance(self.resume_with_new_pack_plan, bool):
            raise ValueError(
                f"`resume_with_new_pack_plan` must be true or false, got {self.resume_with_new_pack_plan!r}."
            )
        self._check_sequence_parallel()  # before `TrainingArguments` starts the process group from WORLD_SIZE
        if self.invalid_rows not in ("raise", "skip"):
            raise ValueError(f"`invalid_rows` must be 'raise' or 'skip', got {self.invalid_rows!r}.")
        for name in ("video_fps", "video_min_frames", "video_max_frames", "video_max_pixels"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)}.")
        if None not in (self.video_min_frames, self.video_max_frames) and self.video_min_frames > self.video_max_frames:
            raise ValueError(
                f"`video_min_frames` ({self.video_min_frames}) is above `video_max_frames` ({self.video_max_frames}); "
                "lower the first or raise the second."
            )
        self._refuse_sft_fields_vlsft_cannot_honour()
        if self.use_liger_kernel:  # Liger's layer kernels, never its loss (`vlsft.liger`)
            on_gpu = not self.use_cpu and torch.cuda.is_available()
            self.liger_kernel_config = liger_layer_kernels(self.liger_kernel_config, on_gpu)
        if self.loss_chunk_size < 1:
            raise ValueError(f"`loss_chunk_size` must be >= 1, got {self.loss_chunk_size}.")
        # vlsft's collator renders, tokenizes and masks every row on the fly, so TRL's up-front tokenization is
        # skipped and the raw columns must reach the collator.
        self.dataset_kwargs = {**(self.dataset_kwargs or {}), "skip_prepare_dataset": True}
        self.remove_unused_columns = False
        # TRL turns bf16 on whenever fp16 is off, which fails on a machine without a bf16 GPU. Default to bf16
        # only where the run uses such a GPU: a `use_cpu` run on a GPU machine trains in fp32 as on any CPU (bf16
        # there would be CPU autocast, slower and about 3 significant digits); an explicit True/False is kept.
        if self.bf16 is None and not self.fp16:
            self.bf16 = not self.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
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
        # After TrainingArguments resolved the `gradient_checkpointing_kwargs` alias and parsed a JSON string.
        problems = check_checkpointing_kwargs(self.activation_checkpointing_kwargs)
        if problems:
            raise ValueError("; ".join(problems) + ".")
        packing_enabled(self)  # an unsupported packing setting fails here, with the fix

    def _check_sequence_parallel(self) -> None:
        """`sequence_parallel_size`: an integer >= 1 dividing the world size; > 1 only where vlsft splits exactly
        (the model family is checked when the trainer starts, `vlsft.sequence_parallel`)."""
        size = self.sequence_parallel_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`sequence_parallel_size` must be an integer >= 1, got {size!r}.")
        if size == 1:
            return
        # Checked here when launched (WORLD_SIZE set); a recipe's `--dry-run` checks its layout's process count, and
        # the trainer checks the process group's size.
        world_size = int(os.environ.get("WORLD_SIZE", size))
        if world_size % size:
            raise ValueError(
                f"`sequence_parallel_size={size}` must divide the number of processes ({world_size}): each group of "
                f"{size} ranks splits one sequence. Launch a multiple of {size} processes."
            )
        if self.packing or self.padding_free:
            raise ValueError(
                "`sequence_parallel_size > 1` with packing / padding_free is not supported yet (the packed rows' "
                "boundaries are not carried through the gathered attention); turn packing off."
            )
        if not self.average_tokens_across_devices:
            raise ValueError(
                "`sequence_parallel_size > 1` needs `average_tokens_across_devices=True`: a rank holds part of a row, "
                "so the loss must be divided by the supervised tokens of every rank."
            )

    def _refuse_sft_fields_vlsft_cannot_honour(self) -> None:
        """`SFTConfig` fields that only act in TRL's dataset preparation or TRL's loss, both of which vlsft replaces:
        a value that asks for something vlsft does not do is refused with the alternative, never ignored."""
        problems = []
        if self.loss_type not in ("nll", "dft", "chunked_nll"):  # TRL turns its deprecated "chunked_nll" into "nll"
            problems.append(
                f"`loss_type={self.loss_type!r}`: vlsft computes 'nll' (already chunked: `loss_chunk_size`) or 'dft'"
            )
        if self.completion_only_loss:
            problems.append(
                "`completion_only_loss=True`: vlsft trains conversation rows (`messages`), where the completion is the "
                "assistant turns, supervised by `assistant_only_loss=True` (the default); convert prompt/completion rows "
                "to `messages` and leave `completion_only_loss` unset"
            )
        if self.label_smoothing_factor:
            problems.append(
                f"`label_smoothing_factor={self.label_smoothing_factor}`: needs the full logits, which vlsft never builds; "
                "set it to 0"
            )
        if self.dataset_text_field != "text":
            problems.append(
                f"`dataset_text_field={self.dataset_text_field!r}`: vlsft reads conversation rows from `messages`, not a "
                "text column; map your rows to `messages` (recipes: a `format:` key converts known formats)"
            )
        if self.truncation_mode != "keep_start":
            problems.append(
                f"`truncation_mode={self.truncation_mode!r}`: vlsft truncates at `max_length` keeping the start (the "
                "images and the prompt); leave `truncation_mode` at 'keep_start'"
            )
        if self.shuffle_dataset:
            problems.append(
                "`shuffle_dataset=True`: TRL shuffles while preparing the dataset, which vlsft skips (it collates rows on "
                "the fly); the train sampler already shuffles each epoch (`seed`), or pass `dataset.shuffle(seed=...)`"
            )
        dataset_kwargs = self.dataset_kwargs or {}
        if isinstance(dataset_kwargs, dict) and (
            set(dataset_kwargs) - {"skip_prepare_dataset"} or dataset_kwargs.get("skip_prepare_dataset", True) is False
        ):
            problems.append(
                f"`dataset_kwargs={dataset_kwargs!r}`: vlsft always skips TRL's dataset preparation (rows are rendered "
                "and tokenized by its collator); leave `dataset_kwargs` unset"
            )
        if problems:
            raise ValueError("; ".join(problems) + ".")

    def _check_ranges(self) -> None:
        """Values `TrainingArguments` accepts but training fails on only after the model and data are loaded (or, for
        a negative learning rate, trains on silently wrong): refused here, so a `--dry-run` refuses them too."""

        problems = []
        if not isinstance(self.learning_rate, (int, float)) or not math.isfinite(self.learning_rate) or self.learning_rate < 0:
            problems.append(f"`learning_rate` must be a number >= 0, got {self.learning_rate!r}")
        for name, rate in (self.component_learning_rates or {}).items():
            if not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate < 0:
                problems.append(f"`component_learning_rates.{name}` must be a number >= 0, got {rate!r}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"`{name}` must be an integer >= 1, got {value!r}")
        if self.max_length is not None and self.max_length < 1:
            problems.append(f"`max_length` must be >= 1 or None, got {self.max_length!r}")
        if self.weight_decay is not None and self.weight_decay < 0:
            problems.append(f"`weight_decay` must be >= 0, got {self.weight_decay!r}")
        if self.num_train_epochs is not None and self.num_train_epochs < 0:
            problems.append(f"`num_train_epochs` must be >= 0, got {self.num_train_epochs!r}")
        if problems:
            raise ValueError("; ".join(problems) + ".")


def as_vlsft_config(args: TrainingArguments | None, model) -> VLSFTConfig:
    """`args` as a `VLSFTConfig`: an `SFTConfig` or `TrainingArguments` keeps every field it sets."""
    if isinstance(args, VLSFTConfig):
        return args
    if args is None:
        name = model if isinstance(model, str) else get_config_model_id(model.config)
        return VLSFTConfig(output_dir=f"{name.split('/')[-1]}-vlsft")
    # Field values as set, not `to_dict()`, which masks every `*_token` field (hub_token, eos_token, pad_token).
    known = VLSFTConfig.__dataclass_fields__
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init and f.name in known}
    return VLSFTConfig(**values)
