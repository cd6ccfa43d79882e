"""Padding-free packing for vision-language rows: several conversations in one sequence, each exactly as if alone.

`VLSFTConfig(packing=True)` (TRL's field names and meaning: `packing`, `packing_strategy="bfd"`, `max_length` as the
pack budget, `padding_free`) trains on packs instead of padded batches:
- **Plan.** Every row's length, image tokens included, is known before the model runs: it is what validation counts
  (`RowChecker`, the training collator's own rendering and tokenization). Rows are placed best-fit decreasing into
  packs of at most `max_length` tokens (`plan_packs`); a longer row is truncated by the collator's usual rule, which
  never cuts an image (validation refuses a row where it would). The plan is deterministic for a seed; the trainer's
  sampler shuffles the order of the packs, per epoch, as it shuffles rows.
- **Collation** (`PackedCollator`): the rows of the micro-batch are collated by the ordinary collator (same
  rendering, mask, truncation, images in row order), then their unpadded tokens are laid end to end in one sequence
  of shape `[1, total]`, with no attention mask and no padding token at all.
- **Positions.** Each row keeps its own positions: 1D positions restart at 0 per row; for the Qwen-VL families the
  3D mRoPE positions come from the model's own `get_rope_index`, called on each row alone, and are concatenated
  under a first row of per-row text positions (the `[4, batch, length]` layout these models accept). Each call gets
  the row's own slices of `image_grid_thw`, `video_grid_thw` and (Qwen2.5-VL) `second_per_grid_ts`, as the model's
  forward passes them for the row alone; the slices are cut by the image and video counts of the rows themselves,
  not by counting runs of vision tokens (Qwen3-VL writes each video as one run per temporal group, timestamps
  between them).
- **Attention never crosses rows.** The text model gets each pack's row boundaries explicitly (`cu_seq_lens_q/k`,
  `max_length_q/k`, from the text positions the collator writes: `vlsft.packing.boundaries`); the vision tower keeps
  its own per-image ones. What each attention implementation does with them:
  - sdpa: the text model runs `vlsft_packed_sdpa` (`vlsft.packing.attention`): on CUDA in fp16/bf16, one call of
    torch's built-in FlashAttention varlen kernel per pack; elsewhere sdpa on each row's slice. No `[total, total]`
    mask is built and attention costs each row's own length.
  - `flash_attention_2`, `flash_attention_3`, the kernels hub's flash kernels (`kernels-community/flash-attn2`):
    transformers' varlen branch on the explicit boundaries, never its guess from position ids (which has read 3D
    mRoPE positions as rows and run across rows when the text positions were dropped).
  - eager and `flex_attention`: transformers' block-diagonal (document) mask from the rows' text positions
    (`find_packed_sequence_indices`, which runs only without an attention mask and without a KV cache: the collator
    sets `use_cache=False`). The Qwen-VL text models hand their first position row to it; given the 3 mRoPE rows
    only they would not, and rows would attend to each other: hence the 4-row layout.
  - the linear-attention (GatedDeltaNet) layers of the hybrid Qwen3.5 / 3.6 / 3.8 models restart their convolution
    and recurrent state at every row (`vlsft.packing.linear_attention`).
  `tests/test_packing.py`, `test_packing_hybrid.py` and `test_packing_kernels.py` check that no row's logits change
  when another row's tokens or image change, and that packed rows equal padded rows, for every (family, attention)
  pair that runs on the CPU, and what the flash kernels are handed; any other pair is refused
  (`check_packing_support`), as are families added later.
- **Models without a record** (the generic path) pack when their language model is one whose rows are provably kept
  apart: attention layers only, 1D rope (or GLM-4.1V's 3D rope, from its own `get_rope_index` per row), a text model
  type proven by `tests/test_packing_generic.py` (`vlsft.packing.generic_models`). This is decided from the model's
  config: the processor (all that is known before the model loads) names no language model, so a generic record
  packs "as the model decides", and the model is checked as soon as its config is known.
- **The loss is unchanged.** The first token of every row gets the label -100: the loss predicts token t+1 from
  hidden state t, and a row's first token would otherwise be predicted from the previous row's last token. A padded
  batch never supervises a row's first token either, so the supervised targets, and the token count the trainer
  divides by, are the same.

The modules: this one (which settings and models can pack), `plan` (lengths and packs), `collator` (`PackedCollator`:
a pack as one sequence with its positions), `boundaries` (the row boundaries handed to the text model), `attention`
(which attention implementations pack, `vlsft_packed_sdpa`, `use_packed_attention`) and `linear_attention` (the
hybrid models' GatedDeltaNet layers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from vlsft.collator import VisionChatCollator
from vlsft.families import FAMILIES, Family, family_of_model
from vlsft.generic_family import is_generic_family
from vlsft.packing.attention import PACKABLE_ATTENTION, can_pack
from vlsft.packing.generic_models import check_generic_model_packs

# Families whose packed rows are proven isolated (tests/test_packing.py), and how their positions are built.
PACKABLE_FAMILIES = {name: family.packed_positions for name, family in FAMILIES.items() if family.packed_positions}
SUPPORTED_STRATEGIES = ("bfd",)


def packing_enabled(args) -> bool:
    """Whether `args` asks for packing or padding-free batches; raises on settings vlsft does not support."""
    packing, padding_free = bool(getattr(args, "packing", False)), bool(getattr(args, "padding_free", False))
    if not (packing or padding_free):
        return False
    if packing and args.packing_strategy not in SUPPORTED_STRATEGIES:
        raise ValueError(
            f"packing_strategy={args.packing_strategy!r} is not supported for vision-language rows: vlsft packs whole "
            "rows best-fit decreasing and never splits a row (an image cannot be split). Use `packing_strategy: bfd`."
        )
    if packing and args.max_length is None:
        raise ValueError("packing=True needs `max_length`, the number of tokens per pack (image tokens included).")
    if getattr(args, "eval_packing", None):
        raise ValueError(
            "eval_packing=True is not supported: eval rows are collated padding-free (each row on its own positions, "
            "the same loss) but not re-planned into packs. Leave `eval_packing` unset."
        )
    if getattr(args, "train_sampling_strategy", None) == "group_by_length" or getattr(args, "group_by_length", False):
        raise ValueError(
            "packing / padding_free and group_by_length both fight padding; packing removes it. Drop "
            "`train_sampling_strategy: group_by_length` (use the default `random`)."
        )
    return True


def check_family_packs(family: Family, model_config=None) -> None:
    """Raise a ValueError, with the fix, when vlsft does not pack `family` (known from the processor and its template,
    before any row is checked or the model loads: `VLSFTTrainer`, `vlsft train` and its dry run call this). A generic
    record (a model without one) packs as its language model decides: checked here when `model_config` is known,
    else by `check_packing_support` once the model is."""
    if is_generic_family(family):
        if model_config is not None:
            check_generic_model_packs(model_config, family.display_name)
        return
    if family.packed_positions is None:
        raise ValueError(
            f"packing is not supported for the {family.display_name} family; vlsft packs only "
            f"{', '.join(PACKABLE_FAMILIES)}, whose rows are proven kept apart inside a pack. Set `packing: false` "
            "(and `padding_free: false`)."
        )


@contextlib.contextmanager
def packing_hidden_from_trl(args) -> Iterator[None]:
    """TRL's `SFTTrainer` refuses packing and padding-free for vision datasets (its own collator cannot do them);
    vlsft does both itself, so TRL's constructor sees them off while it runs."""
    saved = args.packing, args.padding_free
    args.packing, args.padding_free = False, False
    try:
        yield
    finally:
        args.packing, args.padding_free = saved


def check_packing_support(model, collator: VisionChatCollator) -> str:
    """The position scheme ("mrope" or "1d") of `model`, or a ValueError saying why its packed rows could not be
    kept apart. `model` is the bare model (no PEFT or DDP wrapper)."""
    family = family_of_model(model)
    if family is None and is_generic_family(collator.family):
        scheme = check_generic_model_packs(model.config, collator.family.display_name)
        _check_attention_packs(model)
        return scheme
    collates_as_model = family is not None and collator.family.name in (family, *_same_collation(family))
    if family not in PACKABLE_FAMILIES or not collates_as_model:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise ValueError(
            f"packing is not supported for model type {model_type!r} (template family {collator.family.name!r}): "
            f"vlsft packs only {', '.join(PACKABLE_FAMILIES)}, whose rows are proven kept apart inside a pack. Set "
            "`packing: false` (and `padding_free: false`)."
        )
    _check_attention_packs(model)
    return PACKABLE_FAMILIES[family]


def _check_attention_packs(model) -> None:
    attention = model.config._attn_implementation
    text_attention = model.config.get_text_config()._attn_implementation
    if not (can_pack(attention) and can_pack(text_attention)):
        raise ValueError(
            f"packing is not supported with attn_implementation={text_attention!r}: vlsft packs with "
            f"{', '.join(PACKABLE_ATTENTION)} or a flash attention (flash_attention_2, flash_attention_3, "
            "kernels-community/flash-attn2...), whose separation of rows is tested. Load the model with one of "
            "these (e.g. `attn_implementation='sdpa'`), or set `packing: false`."
        )


def packed_positions(family: Family, model=None) -> str:
    """The position scheme packed rows of `family` get ("mrope" or "1d"), or a ValueError with the fix; a generic
    record's rows pack only as its `model` allows, with the positions its language model takes."""
    if is_generic_family(family):
        if model is None:
            raise ValueError(
                f"packed {family.display_name} rows need the model, whose language model decides whether its rows can "
                "be kept apart: pass it (`PackedCollator(collator, model=model)`); VLSFTTrainer does."
            )
        return check_generic_model_packs(model.config, family.display_name)
    check_family_packs(family)
    return family.packed_positions


def _same_collation(family: str) -> tuple[str, ...]:
    """Families that collate `family`'s models: the same stock template (Qwen3-VL-MoE collates as Qwen3-VL), or
    the same model types (the Qwen3.5 / 3.6 / 3.8 templates all serve `qwen3_5` and `qwen3_5_moe`)."""
    spec = FAMILIES[family]
    return tuple(
        name for name, other in FAMILIES.items()
        if other.stock_template == spec.stock_template or other.model_types == spec.model_types
    )
