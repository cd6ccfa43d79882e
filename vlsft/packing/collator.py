"""`PackedCollator`: the rows of a pack collated by the training collator, then laid end to end in one sequence
`[1, total]` with each row's own positions (the Qwen-VL families' 3D mRoPE positions from the model's own
`get_rope_index`), no attention mask, and no target across a row boundary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlsft.collator import VisionChatCollator
from vlsft.data.rows import row_images, row_videos
from vlsft.packing import PACKABLE_FAMILIES, packed_positions
from vlsft.tokens import IGNORE_INDEX, image_token_runs


class PackedCollator:
    """Collates packs (lists of rows; plain rows are packs of one) into one padding-free sequence `[1, total]`:
    `input_ids`, `labels`, `position_ids` and the family's image-token map, without an attention mask; vision tensors
    in row order, as `rows_collator` returns them. `model` is needed for the Qwen-VL families (`get_rope_index`) and
    for a model without a record (its language model decides whether it packs)."""

    def __init__(self, rows_collator: VisionChatCollator, model=None):
        self.rows_collator = rows_collator
        self.model = model
        self.positions = packed_positions(rows_collator.family, model)
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
        image_runs = [len(image_token_runs(row)) for row in is_image]
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


def packed_row_ids(batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """`[1, total]`: the row (0, 1, ...) of each token of a packed batch (no attention mask; rows found where the
    text positions restart at 0, as the attention finds them), or None for a padded batch."""
    positions = batch.get("position_ids")
    if positions is None or batch.get("attention_mask") is not None:
        return None
    text = positions[0] if positions.dim() == 3 else positions  # Qwen-VL: the first of the 4 rows, per-row positions
    return torch.cumsum(text == 0, dim=-1) - 1
