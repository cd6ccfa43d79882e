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
                                             # (or `conversations`, with `format: sharegpt` / `llava`)
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

This module holds the sections, plain dataclasses (`training` stays a dict until `vlsft.recipes.build` builds the
`VLSFTConfig`); `vlsft.recipes.loading` reads and checks the YAML, `vlsft.recipes.checks` the values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlsft.recipes import layouts

DTYPES = ("auto", "bfloat16", "float16", "float32")
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
SOURCE_FORMATS = ("messages", "sharegpt", "llava")
SOURCE_COLUMNS = ("messages", "images", "image", "videos", "tools", "conversations")  # conversations: sharegpt / llava


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key and says how to fix it."""


# -- schema ------------------------------------------------------------------------------------------------------


@dataclass
class ModelSection:
    """`model:` what to load, what to freeze, and per-component learning rates.

    name_or_path: Hub name, local directory, or a name registered in `vlsft.recipes.registry` (`tiny-qwen3-vl`:
        a tiny random Qwen3-VL built locally; `tiny` holds its builder's keyword arguments, e.g. `{hidden_size: 128}`).
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
    columns: `{target: source column}` to rename columns to `messages`, `images`, `image`, `videos`, `tools`, or
        `conversations` (the turns that `format: sharegpt` / `llava` converts).
    image_root: directory that relative image paths resolve against. Default: `training.image_root` if set, else
        the directory of a local data file.
    rows / fraction: keep this many rows / this fraction of the rows (a seeded random sample; at most one of them).
    weight: mixture weight (train sources only; see `DataSection`).
    format: how conversations are stored: `messages` (default, TRL's conversational format), `sharegpt` or `llava`
        (a `conversations` column of `from`/`value` turns, `<image>` / `<video>` markers in the text, optional
        per-turn `weight` / `train`), converted on load (`vlsft.data.formats`).
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
    """`layout:` where it runs. `strategy` picks the accelerate config shipped in vlsft/configs/ (`vlsft.recipes.layouts`); the world size is
    `gpus_per_node * nodes`."""

    strategy: str = "single_gpu"
    gpus_per_node: int = 1
    nodes: int = 1

    @property
    def num_processes(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def accelerate_config(self) -> Path:
        return layouts.accelerate_config(self.strategy)

    @property
    def deepspeed_config(self) -> Path | None:
        return layouts.deepspeed_config(self.strategy)


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



TOP_LEVEL = ("model", "data", "training", "lora", "layout")
