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
  convolution would drop `seq_idx`). vlsft then runs the layer on each row's slice of the pack: every other part of
  the layer works token by token, so each slice gives exactly what the row gives alone.
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


def row_index_per_token(cu_seq_lens: torch.Tensor) -> torch.Tensor:
    """`seq_idx` `[1, total]` int32 (causal-conv1d's format): each token's row in the pack."""
    lengths = (cu_seq_lens[1:] - cu_seq_lens[:-1]).long()
    rows = torch.arange(len(lengths), device=cu_seq_lens.device, dtype=torch.int32)
    return torch.repeat_interleave(rows, lengths).unsqueeze(0)


def restart_linear_attention_per_row(text_model: torch.nn.Module) -> None:
    """Give every linear-attention layer of `text_model` a forward that keeps the rows of a pack apart."""
    for layer in linear_attention_layers(text_model):
        layer.forward = types.MethodType(_forward_per_row, layer)


def _forward_per_row(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    forward = type(self).forward
    if cu_seq_lens is None or cache_params is not None:  # not a pack (padded batch, generation)
        return forward(self, hidden_states, cache_params, attention_mask, **kwargs)
    if hidden_states.is_cuda and varlen_linear_attention_kernels():
        return forward(self, hidden_states, None, attention_mask, seq_idx=row_index_per_token(cu_seq_lens), **kwargs)
    kwargs = {key: value for key, value in kwargs.items() if key not in ROW_BOUNDARY_KWARGS}
    bounds = cu_seq_lens.tolist()
    rows = [
        forward(self, hidden_states[:, start:end], None, None, **kwargs) for start, end in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(rows, dim=1)
