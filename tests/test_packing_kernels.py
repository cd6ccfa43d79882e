"""Packing on the GPU's attention kernels, proven on the CPU for what can run here:

- flash attention (`flash_attention_2/3`, the kernels hub's): the text model's attention gets the pack's rows
  explicitly (`cu_seq_lens_q/k`, `max_length_q/k`), the text positions (never the 3D mRoPE rows, never dropped), and
  the vision tower its own per-image `cu_seqlens`. The flash kernels are CUDA builds: here a pure-torch varlen
  attention, registered through transformers' `AttentionInterface` under a flash name, runs on exactly what a flash
  kernel is handed, and the rows stay apart and equal to padded rows.
- `vlsft_packed_sdpa`'s varlen path (torch's `varlen_attn` on CUDA): the same model run through the one-call-per-pack
  code with a pure-torch varlen attention registered for the CPU in `VARLEN_KERNELS`.
- `flex_attention` (slow: inductor compiles the forward): per-row logits isolated and per-row losses equal to padded;
  its backward does not run on the CPU.
None of the CUDA kernels themselves has run in this suite.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from tests.test_packing import assert_packed_equals_padded, family_rows, forward, row_nll, spans
from vlsft.collator import VisionChatCollator
from vlsft.packing import check_packing_support
from vlsft.packing.attention import VARLEN_KERNELS, is_flash_attention, use_packed_attention
from vlsft.packing.boundaries import text_model_of
from vlsft.packing.collator import PackedCollator
from vlsft.templates import training_template
from vlsft.testing.tiny_families import build_tiny

REFERENCE_FLASH = "vlsft_reference_flash_varlen"  # "flash" in the name: models take their flash-attention paths


def reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                     enable_gqa=False):
    """Varlen attention in plain torch, with `torch.nn.attention.varlen.varlen_attn`'s signature: `[total, heads,
    dim]` in and out, each sequence of `cu_seq_q` on its own, causal when `window_size == (-1, 0)`."""
    assert cu_seq_q.dtype == torch.int32 and torch.equal(cu_seq_q, cu_seq_k) and max_q == max_k
    lengths = (cu_seq_q[1:] - cu_seq_q[:-1]).tolist()
    assert max(lengths) == max_q
    if enable_gqa:
        key, value = (t.repeat_interleave(query.shape[1] // key.shape[1], dim=1) for t in (key, value))
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    outputs = []
    for start, end in zip(cu_seq_q[:-1].tolist(), cu_seq_q[1:].tolist()):
        q, k, v = (t[start:end].transpose(0, 1).float() for t in (query, key, value))  # [heads, n, dim]
        scores = q @ k.transpose(1, 2) * scale
        if tuple(window_size) == (-1, 0):
            scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
        outputs.append((scores.softmax(-1) @ v).transpose(0, 1).to(query.dtype))
    return torch.cat(outputs)


CALLS: list[dict] = []


def reference_flash_attention(module, query, key, value, attention_mask, scaling=None, is_causal=None, **kwargs):
    """A flash attention implementation on transformers' attention interface (`[batch, heads, n, dim]` in,
    `[batch, n, heads, dim]` out), run by `reference_varlen` on the varlen arguments it is handed; without them, one
    sequence per batch row (what a flash kernel does then: a pack would attend across its rows). Records its calls."""
    CALLS.append({"module": module, "attention_mask": attention_mask, "is_causal": is_causal, **kwargs})
    causal = module.is_causal if is_causal is None else is_causal
    batch, heads, length, _ = query.shape
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None:
        assert attention_mask is None, "the reference runs packs, not padded batches"
        cu_seq_lens = torch.tensor([0, length], dtype=torch.int32)
        kwargs.update(max_length_q=length, max_length_k=length, cu_seq_lens_k=cu_seq_lens)
        assert batch == 1
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    output = reference_varlen(
        q, k, v, cu_seq_lens, kwargs.get("cu_seq_lens_k", cu_seq_lens), kwargs["max_length_q"], kwargs["max_length_k"],
        scale=scaling, window_size=(-1, 0) if causal else (-1, -1), enable_gqa=q.shape[1] != k.shape[1],
    )
    return output.unsqueeze(0), None


AttentionInterface.register(REFERENCE_FLASH, reference_flash_attention)
AttentionMaskInterface.register(REFERENCE_FLASH, flash_attention_mask)

MROPE_FAMILIES = {"qwen3_vl": "qwen3_vl", "qwen2_5_vl": "qwen2_5_vl", "qwen3_5_moe": "qwen3_5_think"}
ONE_D_FAMILIES = {"llava_next": "llava_next", "idefics3": "idefics3"}


def text_key(model) -> str:
    return next(name for name in model.config.sub_configs if getattr(model.config, name) is model.config.get_text_config())


def packed_setup(architecture, template, attention):
    """(model set to `attention` everywhere it runs attention, its packed collator, the rows collator, the sdpa
    reference model)."""
    model, processor = build_tiny(architecture, seed=0)
    reference = copy.deepcopy(model).eval()
    model = copy.deepcopy(model).eval()
    if attention == REFERENCE_FLASH:
        # Set on the configs, as loading with it would: `set_attn_implementation` would first import a flash
        # package (a CUDA build) for any name with "flash" in it. CLIP / SigLIP towers stay on sdpa.
        configs = [model.config.get_text_config()]
        if hasattr(model.model, "visual"):  # Qwen-VL: the vision tower too, on its per-image cu_seqlens
            configs += [model.config, model.config.vision_config]
        for config in configs:
            config._attn_implementation = REFERENCE_FLASH
    else:
        model.set_attn_implementation(attention)
    collator = VisionChatCollator(processor, training_template(template))
    assert check_packing_support(model, collator) in ("mrope", "1d")
    use_packed_attention(model)
    return model, PackedCollator(collator, model=model), collator, reference


@pytest.mark.parametrize("architecture", [*MROPE_FAMILIES, *ONE_D_FAMILIES])
def test_flash_attention_gets_the_rows_of_the_pack_and_the_vision_tower_its_images(architecture):
    template = {**MROPE_FAMILIES, **ONE_D_FAMILIES}[architecture]
    model, packer, collator, reference = packed_setup(architecture, template, REFERENCE_FLASH)
    assert is_flash_attention(model.config.get_text_config()._attn_implementation)
    rows = family_rows()
    batch = packer(rows)
    lengths = collator(rows)["attention_mask"].sum(-1).tolist()
    CALLS.clear()
    with torch.no_grad():
        packed = forward(model, batch)
        padded = forward(reference, collator(rows))
    text_layers = set(text_model_of(model).modules())
    text_calls = [call for call in CALLS if call["module"] in text_layers]
    vision_calls = [call for call in CALLS if call["module"] not in text_layers]
    expected_rows = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert text_calls, "the text model ran another attention"
    for call in text_calls:
        # The pack's rows, once each (not 3x from the mRoPE rows, PR #44911), as the flash kernels take them.
        assert call["cu_seq_lens_q"].tolist() == call["cu_seq_lens_k"].tolist() == expected_rows
        assert call["cu_seq_lens_q"].dtype == torch.int32
        assert call["max_length_q"] == call["max_length_k"] == max(lengths)
        assert call["attention_mask"] is None and call["is_causal"] in (None, True)
        # The text positions reach the attention (not dropped, PR #40490), never the 3D rows.
        assert call["position_ids"].tolist() == [[i for n in lengths for i in range(n)]]
    if "image_grid_thw" in batch:  # Qwen-VL: the vision tower runs flash too, on its own images
        assert vision_calls
        patches = batch["image_grid_thw"].prod(-1)
        for call in vision_calls:
            assert call["cu_seq_lens_q"].tolist() == [0, *patches.cumsum(0).tolist()] and call["is_causal"] is False
    for index, span in enumerate(spans(lengths)):  # every row as in a padded sdpa batch
        torch.testing.assert_close(packed[0, span], padded[index, : lengths[index]], rtol=1e-5, atol=1e-5)


def test_flash_attention_without_the_row_boundaries_would_attend_across_rows():
    """The check above can fail: the same reference kernel, handed no boundaries, runs the pack as one sequence."""
    model, packer, collator, reference = packed_setup("qwen3_vl", "qwen3_vl", REFERENCE_FLASH)
    del model.model.language_model.forward  # the class's forward: no row boundaries from vlsft
    rows = family_rows()
    lengths = collator(rows)["attention_mask"].sum(-1).tolist()
    with torch.no_grad():
        packed = forward(model, packer(rows))
        padded = forward(reference, collator(rows))
    last = list(spans(lengths))[-1]
    assert not torch.allclose(packed[0, last], padded[-1, : lengths[-1]], atol=1e-3)


@pytest.mark.parametrize("architecture", ["qwen3_vl", "qwen2_5_vl", "qwen3_5_moe"])
def test_packed_sdpa_varlen_path_equals_padded(architecture, monkeypatch):
    """`vlsft_packed_sdpa`'s one varlen call per pack (torch's FlashAttention varlen on CUDA), here with the
    pure-torch `reference_varlen` registered for the CPU: losses and gradients equal the padded batch's."""
    template = {**MROPE_FAMILIES, **ONE_D_FAMILIES}[architecture]
    model, packer, collator, _ = packed_setup(architecture, template, "sdpa")
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[3])
        return reference_varlen(*args, **kwargs)

    monkeypatch.setitem(VARLEN_KERNELS, "cpu", (counted, (torch.float32,)))
    rows = family_rows()
    padded, packed = collator(rows), packer(rows)
    lengths = padded["attention_mask"].sum(-1).tolist()
    model.train()
    assert_packed_equals_padded(model, padded, packed, lengths)
    text_config = model.config.get_text_config()
    layer_types = getattr(text_config, "layer_types", None) or ["full_attention"] * text_config.num_hidden_layers
    assert len(calls) == layer_types.count("full_attention")  # one call per pack and attention layer
    assert all(c.tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()] for c in calls)


@pytest.mark.slow
def test_flex_attention_forward_keeps_packed_rows_apart():
    """flex_attention over a pack (transformers' document mask from the rows' text positions, compiled by inductor:
    about a minute here): per-row logits isolated, per-row losses equal to padded sdpa rows."""
    model, packer, collator, reference = packed_setup("llava_next", "llava_next", {"text_config": "flex_attention"})
    rows = family_rows()
    lengths = collator(rows)["attention_mask"].sum(-1).tolist()
    base = packer(rows)
    with torch.no_grad():
        packed = forward(model, base)
        changed = forward(model, packer(family_rows(second_image=(0, 0, 255))))
        padded = forward(reference, collator(rows))
    for index, span in enumerate(spans(lengths)):
        torch.testing.assert_close(packed[0, span], padded[index, : lengths[index]], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            row_nll(packed[0, span], base["labels"][0, span]),
            row_nll(padded[index, : lengths[index]], collator(rows)["labels"][index, : lengths[index]]),
            rtol=1e-5, atol=0,
        )
        if index != 1:
            assert torch.equal(changed[0, span], packed[0, span]), f"row {index} changed with row 1"


def test_which_attention_implementations_pack():
    """Every flash kernel a GPU user sets, flex, sdpa and eager pack; continuous batching's paged attention does not."""
    model, processor = build_tiny("qwen3_vl", seed=0)
    model = copy.deepcopy(model)
    collator = VisionChatCollator(processor, training_template("qwen3_vl"))
    for implementation in ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn2", "flex_attention",
                           "sdpa", "eager"):
        model.config._attn_implementation = model.config.get_text_config()._attn_implementation = implementation
        assert check_packing_support(model, collator) == "mrope", implementation
    for implementation in ("paged|flash_attention_2", "paged|sdpa"):
        model.config._attn_implementation = model.config.get_text_config()._attn_implementation = implementation
        with pytest.raises(ValueError, match="packing is not supported with attn_implementation"):
            check_packing_support(model, collator)


def test_liger_kernels_are_refused_on_the_cpu_and_never_replace_the_loss():
    """Liger is Triton (GPU only): refused on the CPU with the reason; on a GPU its loss kernels stay off whatever the
    config asks, and a config that asks for them is refused (what a GPU run would hand `Trainer`, checked here)."""
    from vlsft import VLSFTConfig
    from vlsft.liger import liger_layer_kernels

    with pytest.raises(ValueError, match="Triton kernels, which run on GPUs only"):
        VLSFTConfig(output_dir="unused", report_to="none", use_liger_kernel=True)
    with pytest.raises(ValueError, match="Triton"):
        liger_layer_kernels({"rms_norm": True}, on_gpu=False)
    for asked in ({"fused_linear_cross_entropy": True}, {"cross_entropy": True, "rope": True}):
        with pytest.raises(ValueError, match="would replace vlsft's supervised-token loss"):
            liger_layer_kernels(asked, on_gpu=True)
    for bad in ("rope", {"rope": "yes"}, {1: True}):
        with pytest.raises(ValueError, match="must map kernel names to true/false"):
            liger_layer_kernels(bad, on_gpu=True)
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install liger-kernel"):
            liger_layer_kernels({"rope": False}, on_gpu=True)
    else:
        assert liger_layer_kernels({"rope": False}, on_gpu=True) == {
            "rope": False, "cross_entropy": False, "fused_linear_cross_entropy": False
        }
