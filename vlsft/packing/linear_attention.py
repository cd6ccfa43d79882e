"""Packed rows through the linear-attention (GatedDeltaNet) layers of the hybrid Qwen3.5 / 3.6 / 3.8 models: each
row's convolution and recurrent state start from zero, as for the row alone.

A GatedDeltaNet layer carries two states along the sequence: a causal depthwise convolution (the last
`linear_conv_kernel_dim - 1` tokens) and the delta rule's recurrent state. Over a pack, both would run from one row
into the next. The layer's forward takes the pack's row boundaries (`cu_seq_lens_q`, which
`vlsft.packing.boundaries` hands the text model and the decoder layers pass on):
- with `flash-linear-attention` (fla) and `causal-conv1d` installed and the model on CUDA, transformers calls their
  varlen kernels: fla's `chunk_gated_delta_rule` gets `cu_seqlens` (transformers passes `cu_seq_lens_q` as such) and
  `causal_conv1d_fn` gets `seq_idx` (each token's row index), which vlsft adds;
- otherwise transformers runs its torch fallback, which cannot keep rows apart (it refuses `cu_seqlens`, and its
  convolution would drop `seq_idx`). vlsft then runs the layer on each row's slice of the pack (every other part of
  the layer works token by token, so each slice gives exactly what the row gives alone); under DeepSpeed ZeRO-3, where
  every rank must call the layer equally often, once on the pack's rows as a right-padded batch with its padding mask
  (the layer's own padded path), taking the rows back out.
The per-row forward is installed on each layer instance (`restart_linear_attention_per_row`), not on the class.
The boundaries arrive as arguments of the decoder layer, so gradient checkpointing recomputes with the same ones.
"""

from __future__ import annotations

import functools
import importlib
import types

import torch

from vlsft.packing.boundaries import ROW_BOUNDARY_KWARGS


def linear_attention_layers(text_model: torch.nn.Module) -> list[torch.nn.Module]:
    """The linear-attention token mixers of a hybrid text model (`layer.linear_attn`), in layer order."""
    layer_types = getattr(text_model.config, "layer_types", None) or ()
    layers = [layer for layer, kind in zip(text_model.layers, layer_types) if kind == "linear_attention"]
    missing = [i for i, layer in enumerate(layers) if not hasattr(layer, "linear_attn")]
    if missing:
        raise ValueError(
            f"{type(text_model).__name__} declares linear-attention layers that vlsft cannot find (`linear_attn`); "
            "packing would let their state run across rows. Set `packing: false`."
        )
    return [layer.linear_attn for layer in layers]


@functools.cache
def varlen_linear_attention_kernels() -> bool:
    """Whether the packages whose varlen kernels transformers calls for GatedDeltaNet are installed (fla's gated
    delta rule and causal-conv1d's convolution): the same imports transformers resolves them by."""
    try:
        importlib.import_module("fla.ops.gated_delta_rule")
        importlib.import_module("causal_conv1d")
    except Exception:  # not installed, or installed without a working build (Triton / CUDA extension)
        return False
    return True


def rows_and_offsets(cu_seq_lens: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's row in the pack and its position in that row (long, on the pack's device, without a host sync)."""
    lengths = (cu_seq_lens[1:] - cu_seq_lens[:-1]).long()
    rows = torch.repeat_interleave(torch.arange(len(lengths), device=cu_seq_lens.device), lengths, output_size=total)
    offsets = torch.arange(total, device=cu_seq_lens.device) - cu_seq_lens.long()[rows]
    return rows, offsets


def restart_linear_attention_per_row(text_model: torch.nn.Module, one_call: bool = False) -> None:
    """Give every linear-attention layer of `text_model` a forward that keeps the rows of a pack apart. `one_call`:
    on the torch fallback, call the layer once per pack (its rows as a padded batch) instead of once per row, so
    that every data-parallel rank calls its modules equally often whatever its rows (DeepSpeed ZeRO-3 gathers the
    weights of a module on each call: ranks calling a different number of times would not meet)."""
    forward = functools.partial(_forward_keeping_rows_apart, one_call=one_call)
    for layer in linear_attention_layers(text_model):
        layer.forward = types.MethodType(forward, layer)


def _forward_keeping_rows_apart(self, hidden_states, cache_params=None, attention_mask=None, *, one_call, **kwargs):
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    forward = type(self).forward
    if cu_seq_lens is None or cache_params is not None:  # not a pack (padded batch, generation)
        return forward(self, hidden_states, cache_params, attention_mask, **kwargs)
    rows, offsets = rows_and_offsets(cu_seq_lens, hidden_states.shape[1])
    if hidden_states.is_cuda and varlen_linear_attention_kernels():  # causal-conv1d's `seq_idx`: [1, total] int32
        return forward(self, hidden_states, None, attention_mask, seq_idx=rows.to(torch.int32).unsqueeze(0), **kwargs)
    longest = kwargs["max_length_q"]
    kwargs = {key: value for key, value in kwargs.items() if key not in ROW_BOUNDARY_KWARGS}
    if not one_call:  # each row's slice on its own: no padding at all
        bounds = cu_seq_lens.tolist()
        slices = [hidden_states[:, start:end] for start, end in zip(bounds[:-1], bounds[1:])]
        return torch.cat([forward(self, row, None, None, **kwargs) for row in slices], dim=1)
    # The rows right-padded into a batch `[rows, longest]` with their padding mask (the layer's own padded path),
    # then laid back end to end.
    padded = hidden_states.new_zeros(len(cu_seq_lens) - 1, longest, hidden_states.shape[-1])
    padded = padded.index_put((rows, offsets), hidden_states[0])
    mask = torch.zeros(padded.shape[:2], dtype=torch.long, device=hidden_states.device)
    mask = mask.index_put((rows, offsets), torch.ones_like(rows))
    output = forward(self, padded, None, mask, **kwargs)
    return output[rows, offsets].unsqueeze(0)
