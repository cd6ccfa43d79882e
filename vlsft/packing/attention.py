"""Attention that keeps packed rows apart: which attention implementations can pack, `vlsft_packed_sdpa` (registered
with transformers' attention and mask registries under vlsft's own name, which only a model set to it uses), and
`use_packed_attention`, which sets a model up to train on packs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn.attention.varlen import varlen_attn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils.generic import is_flash_attention_requested

from vlsft.packing.boundaries import ROW_BOUNDARY_KWARGS, hand_row_boundaries_to_text_model, text_model_of
from vlsft.packing.linear_attention import restart_linear_attention_per_row

# The attention implementation a packed text model runs with sdpa: each row attends on its own (see below).
PACKED_SDPA = "vlsft_packed_sdpa"
# Attention implementations whose packed rows are kept apart: eager and flex_attention through transformers'
# block-diagonal (document) mask from the rows' text positions; sdpa (run as PACKED_SDPA) row by row; PACKED_SDPA
# itself. Besides these, every flash attention implementation (`is_flash_attention`), on the pack's explicit row
# boundaries.
PACKABLE_ATTENTION = ("sdpa", "eager", "flex_attention", PACKED_SDPA)


def is_flash_attention(implementation: str | None) -> bool:
    """`flash_attention_2/3/4` and the kernels hub's flash kernels (`kernels-community/flash-attn2`, ...): the
    implementations that run transformers' `flash_attention_forward`, which takes the varlen arguments vlsft hands
    the text model (`vlsft.packing.boundaries`). Not the paged (continuous batching) variants, which are for
    generation."""
    return is_flash_attention_requested(requested_attention_implementation=implementation) and "paged" not in (
        implementation or ""
    )


def can_pack(implementation: str | None) -> bool:
    return implementation in PACKABLE_ATTENTION or is_flash_attention(implementation)


# transformers keeps packed rows apart for sdpa and eager with a dense [total, total] block-diagonal mask: every row
# then pays attention over the whole pack (a pack of 8 rows of 1k tokens costs the attention of one 8k row) and the
# mask itself is total^2. PACKED_SDPA instead attends each row on its own, on the pack's row boundaries
# (`cu_seq_lens_q`): where a varlen kernel is registered for the device and dtype (torch's built-in FlashAttention
# varlen on CUDA, fp16/bf16), one call over the whole pack; elsewhere transformers' own sdpa on each row's slice with
# the causal flag. Attention costs the sum of the rows' squares, no mask is built, and a row cannot see another by
# construction. Calls that are not packed (a padded batch, generation with a cache) go to plain sdpa with its usual
# mask.

# Varlen kernels PACKED_SDPA calls once per pack, per device type: (function with `varlen_attn`'s signature, the
# dtypes it takes). Another device's kernel (or a reference implementation, in tests) is registered here.
VARLEN_KERNELS: dict[str, tuple[Callable, tuple[torch.dtype, ...]]] = {
    "cuda": (varlen_attn, (torch.float16, torch.bfloat16)),
}


def packed_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention over a packed sequence `[1, heads, total, dim]`, each row on its own (rows from `cu_seq_lens_q`)."""
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if attention_mask is not None or cu_seq_lens is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kernel, dtypes = VARLEN_KERNELS.get(query.device.type, (None, ()))
    if kernel is not None and query.dtype in dtypes and not kwargs.get("dropout") and query.shape[-1] == value.shape[-1]:
        return _varlen_attention(kernel, query, key, value, kwargs), None
    kwargs = {key_: v for key_, v in kwargs.items() if key_ not in ROW_BOUNDARY_KWARGS}
    kwargs["is_causal"] = True
    bounds = cu_seq_lens.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        part = slice(start, end)
        output, _ = sdpa_attention_forward(module, query[:, :, part], key[:, :, part], value[:, :, part], None, **kwargs)
        outputs.append(output)
    return torch.cat(outputs, dim=1), None


def _varlen_attention(kernel, query, key, value, kwargs) -> torch.Tensor:
    """One causal varlen call over the pack: `[1, heads, total, dim]` in, `[1, total, heads, dim]` out (as sdpa's)."""
    q, k, v = (tensor[0].transpose(0, 1).contiguous() for tensor in (query, key, value))  # [total, heads, dim]
    output = kernel(
        q, k, v, kwargs["cu_seq_lens_q"], kwargs["cu_seq_lens_k"], kwargs["max_length_q"], kwargs["max_length_k"],
        scale=kwargs.get("scaling"), window_size=(-1, 0), enable_gqa=q.shape[1] != k.shape[1],
    )
    return output.unsqueeze(0)


def packed_sdpa_mask(*args, attention_mask=None, q_length=None, kv_length=None, **kwargs):
    """No mask where `packed_sdpa_attention` splits the rows itself (no padding, no cache); sdpa's mask elsewhere."""
    if attention_mask is None and q_length == kv_length:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, q_length=q_length, kv_length=kv_length, **kwargs)


# Registered under a name of vlsft's own, which only a model set to it uses (transformers' registries are made for
# this; nothing of transformers' own is replaced).
AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)


def use_packed_attention(model, one_call_per_layer: bool = False) -> None:
    """Set `model` (bare, no wrapper) up to train on packs: its text model gets each pack's row boundaries, hybrid
    linear-attention layers restart their state at every row (`one_call_per_layer`: called once per pack, for
    DeepSpeed ZeRO-3), and a text model set to sdpa runs PACKED_SDPA (the vision tower is left as it is)."""
    hand_row_boundaries_to_text_model(model)
    text_model = text_model_of(model)
    if "linear_attention" in (getattr(text_model.config, "layer_types", None) or ()):
        restart_linear_attention_per_row(text_model, one_call=one_call_per_layer)
    text_config = model.config.get_text_config()
    layer_types = getattr(text_config, "layer_types", None)
    windowed = (
        getattr(text_config, "use_sliding_window", False)
        or any(kind not in ("full_attention", "linear_attention") for kind in layer_types or ())
        # Mistral: one window for every layer, set by `sliding_window` alone (no layer types)
        or (layer_types is None and getattr(text_config, "sliding_window", None) is not None)
    )
    if text_config._attn_implementation != "sdpa" or windowed:  # windows: transformers' packed mask keeps them
        return
    if text_config is model.config:
        model.set_attn_implementation(PACKED_SDPA)
    else:
        key = next(name for name in model.config.sub_configs if getattr(model.config, name) is text_config)
        model.set_attn_implementation({key: PACKED_SDPA})
