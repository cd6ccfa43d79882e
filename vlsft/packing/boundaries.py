"""The row boundaries of a pack, handed to the text model explicitly: `cu_seq_lens_q/k` and `max_length_q/k`.

`PackedCollator` writes each row's text positions as 0, 1, ..., n-1, so a row starts exactly where its text
position is 0. `hand_row_boundaries_to_text_model(model)` gives the model's text model (that one instance) a forward
that turns those starts into the varlen arguments every attention kernel of transformers takes:
- flash attention (`flash_attention_2/3`, the kernels hub's) runs its varlen kernel on them instead of guessing the
  rows from `position_ids` (transformers' guess has read 3D mRoPE positions as rows, PR #44911, and has run across
  rows when the text positions were dropped, PR #40490);
- `vlsft_packed_sdpa` attends row by row (or with torch's varlen kernel on CUDA) on them;
- the hybrid models' linear-attention layers restart their state on them (`vlsft.packing.linear_attention`).
Only the text model gets them: the vision tower keeps its own per-image `cu_seqlens` (the multimodal forward hands
its kwargs to both). They are built where the text model is called, so a decoder layer recomputed by gradient
checkpointing gets the same ones.
"""

from __future__ import annotations

import functools
import types

import torch

from vlsft.families import FAMILIES, family_of_model
from vlsft.generic_family import GENERIC_PARTS

# The kwargs this module adds (transformers' `FlashAttentionKwargs` names).
ROW_BOUNDARY_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def text_model_of(model) -> torch.nn.Module:
    """The text model (the module that holds the decoder layers) of a bare transformers VLM: where its family's
    record says, else (a model without one) at transformers 5's `model.language_model`."""
    family = family_of_model(model)
    parts = FAMILIES[family].parts if family is not None else GENERIC_PARTS
    module = getattr(model, "model", None)
    for name in parts.decoder_layers.split(".")[:-1]:
        module = getattr(module, name, None)
    if module is None:
        where = parts.decoder_layers.rsplit(".", 1)[0]
        raise ValueError(
            f"vlsft finds no text model in {type(model).__name__} (at `model.{where}`) to hand the pack's row "
            "boundaries to: set `packing: false`."
        )
    return module


def row_boundaries(position_ids: torch.Tensor) -> dict | None:
    """`cu_seq_lens_q/k` (int32, as the flash kernels take them) and `max_length_q/k` of a pack `[1, total]` from its
    text positions (`[1, total]`, or the first row of the `[4, 1, total]` mRoPE layout); None where there are no
    text positions (the 3 mRoPE rows alone: what a Qwen-VL model computes itself for unpacked rows, where row starts
    cannot be told from the rope rows), several batch rows (not a pack), or positions that do not start at 0 (a
    continuation, e.g. decoding)."""
    if position_ids.dim() == 3:
        if position_ids.shape[0] != 4:
            return None
        position_ids = position_ids[0]
    if position_ids.shape[0] != 1:  # several batch rows: not a pack, each batch row is one sequence
        return None
    text = position_ids[0]
    starts = (text == 0).nonzero().flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        return None
    ends = torch.cat([starts[1:], starts.new_tensor([text.numel()])])
    cu_seq_lens = torch.cat([starts, ends[-1:]]).to(torch.int32)
    longest = int((ends - starts).max())  # the kernels take a Python int
    return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": longest, "max_length_k": longest}


def hand_row_boundaries_to_text_model(model) -> None:
    """Let `model`'s text model add the pack's row boundaries to what its layers get, on every call that is a pack:
    no attention mask, no cache, and position ids that start at 0. Installed on the instance, not the class."""
    text_model = text_model_of(model)

    @functools.wraps(type(text_model).forward)
    def forward(self, *args, **kwargs):
        position_ids, attention_mask = kwargs.get("position_ids"), kwargs.get("attention_mask")
        is_pack = attention_mask is None and kwargs.get("past_key_values") is None and position_ids is not None
        if is_pack and kwargs.get("cu_seq_lens_q") is None:
            kwargs.update(row_boundaries(position_ids) or {})
        return type(self).forward(self, *args, **kwargs)

    text_model.forward = types.MethodType(forward, text_model)
