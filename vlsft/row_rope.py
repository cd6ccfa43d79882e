"""Multimodal rotary positions given for each row of a batch alone.

A model's own `get_rope_index` may number its images across the whole batch rather than within each row:
HunYuan-VL's (transformers 5) gives the second row's first image the image index 1, so a row's positions, and its
loss, change with the rows batched with it, and a batch of 2 no longer trains as 2 accumulated micro-batches of 1.
For a model whose rope takes images only (`get_rope_index(input_ids, mm_token_type_ids, image_grid_thw,
attention_mask)`), the positions are computed here row by row, each row with its own images' grids, and handed to the
forward as `position_ids`: exactly what the model computes for a batch of that row alone. Models whose rope also
takes videos (the Qwen-VL and GLM-4.1V families) number per row already, and are left to compute their own.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

# The parameters of an images-only multimodal rope (HunYuan-VL's).
_IMAGE_ONLY_ROPE = {"input_ids", "mm_token_type_ids", "image_grid_thw", "attention_mask"}


def _image_only_rope_index(model: nn.Module):
    """The bound `get_rope_index` of the model (PEFT-wrapped or not) if it takes images only, else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_rope_index = getattr(getattr(base, "model", None), "get_rope_index", None)
    if get_rope_index is None:
        return None
    parameters = inspect.signature(get_rope_index).parameters
    named = {name for name, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return get_rope_index if named == _IMAGE_ONLY_ROPE else None


def _image_runs(types: torch.Tensor) -> int:
    """How many images a row holds: its runs of image tokens (`mm_token_type_ids` 1), one per image."""
    image = (types == 1).long()
    return int((image[1:] > image[:-1]).sum() + image[:1].sum())


def positions_for_each_row(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor | None:
    """`position_ids` for `inputs` (a padded batch of several rows with images), each row's computed by the model's
    images-only `get_rope_index` on that row alone; None where the model computes its own (no such rope, one row, no
    image, or positions already given)."""
    grids, types, input_ids = inputs.get("image_grid_thw"), inputs.get("mm_token_type_ids"), inputs.get("input_ids")
    if grids is None or types is None or input_ids is None or inputs.get("position_ids") is not None:
        return None
    if input_ids.shape[0] < 2:
        return None
    get_rope_index = _image_only_rope_index(model)
    if get_rope_index is None:
        return None
    attention_mask = inputs.get("attention_mask")
    rows, cursor = [], 0
    for row in range(input_ids.shape[0]):
        valid = attention_mask[row].bool() if attention_mask is not None else torch.ones_like(input_ids[row]).bool()
        images = _image_runs(types[row][valid])
        with torch.no_grad():
            positions, _ = get_rope_index(
                input_ids[row : row + 1],
                mm_token_type_ids=types[row : row + 1],
                image_grid_thw=grids[cursor : cursor + images] if images else None,
                attention_mask=attention_mask[row : row + 1] if attention_mask is not None else None,
            )
        cursor += images
        rows.append(positions)
    return torch.cat(rows, dim=1)
