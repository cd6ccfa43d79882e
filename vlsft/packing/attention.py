"""Attention that keeps packed rows apart without a `[total, total]` mask: `vlsft_packed_sdpa`, registered with
transformers' attention and mask registries under vlsft's own name, which only a model set to it uses."""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, find_packed_sequence_indices, sdpa_mask

# The attention implementation a packed text model runs with sdpa: each row attends on its own (see below).
PACKED_SDPA = "vlsft_packed_sdpa"
# Attention implementations whose packed rows are kept apart: eager through transformers' block-diagonal mask from
# the position ids; sdpa (run as PACKED_SDPA) row by row; PACKED_SDPA itself.
PACKABLE_ATTENTION = ("sdpa", "eager", PACKED_SDPA)

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

