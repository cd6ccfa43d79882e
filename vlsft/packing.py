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
- **Attention never crosses rows.** The rows are found where the (text) position ids restart. With eager attention,
  transformers' `create_causal_mask` builds the block-diagonal causal mask from them (`find_packed_sequence_indices`,
  which runs only without an attention mask and without a KV cache: the collator sets `use_cache=False`). With sdpa,
  the text model runs `vlsft_packed_sdpa` (below): sdpa on each row's slice, so no `[total, total]` mask is built
  and attention costs each row's own length. The Qwen-VL text models hand their first position row to both; given
  the 3 mRoPE rows only they would not, and rows would attend to each other: hence the 4-row layout.
  `tests/test_packing.py` checks bit for bit that no row's logits change when another row's tokens or image
  change, for every (family, attention) pair allowed below; any other pair is refused (`check_packing_support`), as
  are families added later (hybrid linear-attention stacks need their recurrent state reset at row boundaries,
  which this module does not do).
- **The loss is unchanged.** The first token of every row gets the label -100: the loss predicts token t+1 from
  hidden state t, and a row's first token would otherwise be predicted from the previous row's last token. A padded
  batch never supervises a row's first token either, so the supervised targets, and the token count the trainer
  divides by, are the same.
"""

from __future__ import annotations

import bisect
import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, find_packed_sequence_indices, sdpa_mask

from vlsft.collator import IGNORE_INDEX, VisionChatCollator
from vlsft.data.rows import row_images, row_videos
from vlsft.families import FAMILIES, family_of_model

# Families whose packed rows are proven isolated (tests/test_packing.py), and how their positions are built.
PACKABLE_FAMILIES = {name: family.packed_positions for name, family in FAMILIES.items() if family.packed_positions}
# The attention implementation a packed text model runs with sdpa: each row attends on its own (see below).
PACKED_SDPA = "vlsft_packed_sdpa"
# Attention implementations whose packed rows are kept apart: eager through transformers' block-diagonal mask from
# the position ids; sdpa (run as PACKED_SDPA) row by row; PACKED_SDPA itself.
PACKABLE_ATTENTION = ("sdpa", "eager", PACKED_SDPA)
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
    collates_as_model = family is not None and collator.family.name in (family, *_same_collation(family))
    if family not in PACKABLE_FAMILIES or not collates_as_model:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise ValueError(
            f"packing is not supported for model type {model_type!r} (template family {collator.family.name!r}): "
            f"vlsft packs only {', '.join(PACKABLE_FAMILIES)}, whose rows are proven kept apart inside a pack. Set "
            "`packing: false` (and `padding_free: false`)."
        )
    attention = model.config._attn_implementation
    text_attention = model.config.get_text_config()._attn_implementation
    if attention not in PACKABLE_ATTENTION or text_attention not in PACKABLE_ATTENTION:
        raise ValueError(
            f"packing is not supported with attn_implementation={text_attention!r}: vlsft packs with "
            f"{' or '.join(PACKABLE_ATTENTION)}, whose separation of rows is tested. Load the model "
            "with `attn_implementation='sdpa'`, or set `packing: false`."
        )
    return PACKABLE_FAMILIES[family]


def _same_collation(family: str) -> tuple[str, ...]:
    """Families that share `family`'s processor and template (Qwen3-VL-MoE collates as Qwen3-VL)."""
    spec = FAMILIES[family]
    return tuple(name for name, other in FAMILIES.items() if other.training_template == spec.training_template)


# -- attention ---------------------------------------------------------------------------------------------------
#
# transformers keeps packed rows apart for sdpa and eager with a dense [total, total] block-diagonal mask: every row
# then pays attention over the whole pack (a pack of 8 rows of 1k tokens costs the attention of one 8k row) and the
# mask itself is total^2. PACKED_SDPA instead runs transformers' own sdpa on each row's slice with the causal flag,
# the CPU counterpart of varlen flash attention: attention costs the sum of the rows' squares, no mask is built, and
# a row cannot see another by construction. Calls that are not packed (a padded batch, generation with a cache) go
# to plain sdpa with its usual mask.


def packed_sdpa_attention(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """`sdpa_attention_forward`, row by row over a packed sequence (rows found where the position ids restart)."""
    rows = None
    if attention_mask is None and position_ids is not None and query.shape[2] == key.shape[2] > 1:
        rows = find_packed_sequence_indices(position_ids.view(-1, position_ids.shape[-1])[:1])
    if rows is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("packed sequences are laid out as one batch row ([1, total]); got a batch of several.")
    lengths = torch.bincount(rows[0]).tolist()
    kwargs["is_causal"] = True
    outputs, start = [], 0
    for length in lengths:
        end = start + length
        part = slice(start, end)
        q, k, v = query[:, :, part], key[:, :, part], value[:, :, part]
        output, _ = sdpa_attention_forward(module, q, k, v, None, **kwargs)
        outputs.append(output)
        start = end
    return torch.cat(outputs, dim=1), None


def packed_sdpa_mask(*args, attention_mask=None, q_length=None, kv_length=None, **kwargs):
    """No mask where `packed_sdpa_attention` splits the rows itself (no padding, no cache); sdpa's mask elsewhere."""
    if attention_mask is None and q_length == kv_length:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, q_length=q_length, kv_length=kv_length, **kwargs)


# Registered under a name of vlsft's own, which only a model set to it uses (transformers' registries are made for
# this; nothing of transformers' own is replaced).
AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)


def use_packed_attention(model) -> None:
    """Run `model`'s text model with PACKED_SDPA where it runs sdpa (the vision tower is left as it is)."""
    text_config = model.config.get_text_config()
    windowed = getattr(text_config, "use_sliding_window", False) or any(
        kind != "full_attention" for kind in getattr(text_config, "layer_types", None) or ()
    )
    if text_config._attn_implementation != "sdpa" or windowed:  # windows: transformers' packed mask keeps them
        return
    if text_config is model.config:
        model.set_attn_implementation(PACKED_SDPA)
    else:
        key = next(name for name in model.config.sub_configs if getattr(model.config, name) is text_config)
        model.set_attn_implementation({key: PACKED_SDPA})


# -- planning ----------------------------------------------------------------------------------------------------


def plan_packs(lengths: Sequence[int], budget: int, seed: int = 0) -> list[list[int]]:
    """Best-fit decreasing: row indices grouped into packs of at most `budget` tokens (a row longer than the budget
    counts as `budget`: the collator truncates it). Rows are placed longest first, each into the pack it fills
    most tightly, else into a new pack; rows of equal length are taken in an order drawn from `seed`, so a plan is
    the same for the same seed. Packs are returned in creation order, rows inside a pack in index order."""
    if budget < 1:
        raise ValueError(f"the pack budget (max_length) must be >= 1, got {budget}")
    tie_break = list(range(len(lengths)))
    random.Random(seed).shuffle(tie_break)
    order = sorted(range(len(lengths)), key=lambda i: (-min(lengths[i], budget), tie_break[i]))
    packs: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, pack index), sorted: the tightest fit is found by bisection
    for index in order:
        length = min(lengths[index], budget)
        slot = bisect.bisect_left(free, (length, -1))
        if slot < len(free):
            room, pack = free.pop(slot)
        else:
            room, pack = budget, len(packs)
            packs.append([])
        packs[pack].append(index)
        bisect.insort(free, (room - length, pack))
    return [sorted(pack) for pack in packs]


def row_lengths(dataset, collator: VisionChatCollator, batch_size: int = 256) -> list[int]:
    """Every row's token count with image tokens expanded, before truncation, as validation counts it (the training
    collator's own rendering and tokenization; image token counts from the image sizes where the family allows)."""
    from vlsft.data.validation import RowChecker  # validation imports the collator, as this module does

    checker = RowChecker(collator, getattr(dataset, "features", None))
    lengths = []
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        for offset, verdict in enumerate(checker.check(rows)):
            if verdict.reason:
                raise ValueError(f"row {start + offset} cannot be packed: {verdict.reason}")
            lengths.append(verdict.num_tokens)
    return lengths


class PackedRows(torch.utils.data.Dataset):
    """A dataset whose items are packs: lists of the rows of `dataset` that `plan` groups together."""

    def __init__(self, dataset, plan: list[list[int]]):
        self.dataset = dataset
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        return [self.dataset[i] for i in self.plan[index]]


def pack_dataset(dataset, collator: VisionChatCollator, budget: int, seed: int) -> PackedRows:
    """`dataset` planned into packs of at most `budget` tokens."""
    return PackedRows(dataset, plan_packs(row_lengths(dataset, collator), budget, seed))


# -- collation ---------------------------------------------------------------------------------------------------


class PackedCollator:
    """Collates packs (lists of rows; plain rows are packs of one) into one padding-free sequence `[1, total]`:
    `input_ids`, `labels`, `position_ids` and the family's image-token map, without an attention mask; vision tensors
    in row order, as `rows_collator` returns them. `model` is needed for the Qwen-VL families (`get_rope_index`)."""

    def __init__(self, rows_collator: VisionChatCollator, model=None):
        self.rows_collator = rows_collator
        self.model = model
        self.positions = PACKABLE_FAMILIES.get(rows_collator.family.name)
        if self.positions is None:
            raise ValueError(
                f"packing is not supported for the {rows_collator.family.display_name} family; vlsft packs only "
                f"{', '.join(PACKABLE_FAMILIES)}. Set `packing: false` (and `padding_free: false`)."
            )
        if self.positions == "mrope" and not hasattr(getattr(model, "model", None), "get_rope_index"):
            raise ValueError(
                f"packed {rows_collator.family.display_name} rows need the model's own 3D rope positions: pass the "
                "model (`PackedCollator(collator, model=model)`); VLSFTTrainer does."
            )

    # The collator's attributes (family, processor, chat_template...) are the rows collator's.
    def __getattr__(self, name: str):
        if name == "rows_collator":
            raise AttributeError(name)
        return getattr(self.rows_collator, name)

    def __call__(self, items: list[Any]) -> dict[str, torch.Tensor]:
        rows = [row for item in items for row in (item if isinstance(item, list) else [item])]
        batch = self.rows_collator(rows)
        # Each row's image and video counts, from the rows themselves (after collation, which has checked them):
        # the collator takes exactly these values, in row order, so the grids can be sliced per row without
        # guessing from the token runs (a Qwen3-VL video is one run per temporal group).
        images_per_row = [len(row_images(row)) for row in rows]
        videos_per_row = [len(row_videos(row)) for row in rows]
        return self.pack(batch, images_per_row=images_per_row, videos_per_row=videos_per_row)

    def pack(
        self,
        batch: dict[str, torch.Tensor],
        images_per_row: Sequence[int] | None = None,
        videos_per_row: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """A padded batch of the rows collator, laid end to end. `images_per_row` / `videos_per_row`: how many
        images and videos each row holds (needed for the Qwen-VL positions; without them images are counted as
        runs of image tokens, one per image, and a batch with videos is refused)."""
        if batch.get("video_grid_thw") is not None and self.positions != "mrope":
            raise ValueError(
                f"packing rows with videos is supported only for the Qwen-VL families "
                f"({', '.join(f for f, scheme in PACKABLE_FAMILIES.items() if scheme == 'mrope')}); set "
                "`packing: false` for video data."
            )
        attention_mask = batch.pop("attention_mask").bool()
        lengths = attention_mask.sum(-1)
        sequence_keys = ["input_ids", "labels"]
        map_key = self.rows_collator.family.image_map_key
        if map_key is not None and map_key in batch:
            sequence_keys.append(map_key)
        # Per-token tensors aligned with the labels: per-turn weights (`label_weights`), inspect's turn mask.
        sequence_keys += [key for key in ("label_weights", "assistant_turn_mask") if key in batch]
        padded = {key: batch[key] for key in sequence_keys}
        for key in sequence_keys:
            batch[key] = batch[key][attention_mask].unsqueeze(0)
        starts = torch.cumsum(lengths, 0) - lengths
        # No target across a row boundary: a row's first token is never predicted (from the previous row's last).
        batch["labels"][0, starts] = IGNORE_INDEX
        if "label_weights" in batch:
            batch["label_weights"][0, starts] = 0.0  # the weights stay 0 wherever the labels are ignored
        if self.positions == "mrope":
            counts = self._vision_counts(padded, lengths, batch, images_per_row, videos_per_row)
            batch["position_ids"] = self.mrope_position_ids(padded, lengths, batch, *counts)
        else:
            batch["position_ids"] = torch.cat([torch.arange(int(n)) for n in lengths]).unsqueeze(0)
        # transformers derives the block-diagonal mask from the position ids only without a KV cache, and the models
        # make one when `use_cache` is on (their config's default): rows would then attend to each other.
        batch["use_cache"] = False
        return batch

    def _vision_counts(self, padded, lengths, batch, images_per_row, videos_per_row) -> tuple[list[int], list[int]]:
        """Images and videos per row, checked against the batch's grids."""
        rows = len(lengths)
        # An image is one run of image tokens in the Qwen-VL families (vision markers sit between two images); a
        # video is not (Qwen3-VL: one run per temporal group), so videos are only counted from the rows.
        is_image = padded[self.rows_collator.family.image_map_key] == 1
        image_runs = (is_image & ~torch.nn.functional.pad(is_image[:, :-1], (1, 0), value=False)).sum(-1).tolist()
        if images_per_row is None:
            images_per_row = image_runs
        elif list(images_per_row) != image_runs:
            raise ValueError(f"images per row {list(images_per_row)} do not match the rows' image tokens {image_runs}.")
        if videos_per_row is None:
            if batch.get("video_grid_thw") is not None:
                raise ValueError(
                    "packing rows with videos needs each row's video count: pass `videos_per_row` to "
                    "`PackedCollator.pack` (calling the `PackedCollator` on the rows does it itself)."
                )
            videos_per_row = [0] * rows
        checks = (("images", images_per_row, "image_grid_thw"), ("videos", videos_per_row, "video_grid_thw"))
        for name, counts, key in checks:
            grids = batch.get(key)
            if len(counts) != rows or sum(counts) != (0 if grids is None else len(grids)):
                raise ValueError(
                    f"{name} per row {list(counts)} do not match the batch's {0 if grids is None else len(grids)} "
                    f"{key} entries over {rows} rows: pass the counts of the rows the batch was collated from."
                )
        return list(images_per_row), list(videos_per_row)

    def mrope_position_ids(
        self, padded: dict[str, torch.Tensor], lengths: torch.Tensor, batch, images_per_row, videos_per_row
    ) -> torch.Tensor:
        """`[4, 1, total]`: per-row text positions over the 3D positions the model's `get_rope_index` gives each row
        alone (its own slices of `image_grid_thw`, `video_grid_thw` and Qwen2.5-VL's `second_per_grid_ts`, as the
        model's forward passes them for that row alone), concatenated."""
        image_grids, video_grids = batch.get("image_grid_thw"), batch.get("video_grid_thw")
        seconds = batch.get("second_per_grid_ts")
        map_key = self.rows_collator.family.image_map_key
        get_rope_index = self.model.model.get_rope_index
        pieces, image_cursor, video_cursor = [], 0, 0
        for row, length in enumerate(lengths.tolist()):
            ids = padded["input_ids"][row, :length].unsqueeze(0)
            types = padded[map_key][row, :length].unsqueeze(0)
            images, videos = images_per_row[row], videos_per_row[row]
            kwargs = {}
            if images:
                kwargs["image_grid_thw"] = image_grids[image_cursor : image_cursor + images]
            if videos:
                kwargs["video_grid_thw"] = video_grids[video_cursor : video_cursor + videos]
                if seconds is not None:
                    kwargs["second_per_grid_ts"] = seconds[video_cursor : video_cursor + videos]
            image_cursor += images
            video_cursor += videos
            with torch.no_grad():
                spatial, _ = get_rope_index(ids, mm_token_type_ids=types, **kwargs)
            text = torch.arange(length, dtype=spatial.dtype).view(1, 1, -1)
            pieces.append(torch.cat([text, spatial.cpu()], dim=0))
        return torch.cat(pieces, dim=-1)
