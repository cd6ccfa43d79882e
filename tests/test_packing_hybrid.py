"""Packed hybrid Qwen3.5 models (GatedDeltaNet linear attention + full attention, dense and MoE): every row's
linear-attention state restarts at its first token, so packed rows give exactly what padded rows give (losses,
gradients, one training step), with gradient checkpointing on and off, and no row changes with another.

On this CPU the layers run transformers' torch fallback, which vlsft runs on each row's slice, or (under DeepSpeed
ZeRO-3) once on the pack's rows padded (`vlsft.packing.linear_attention`); both are checked. A pack whose state ran
across rows misses these bars: by up to 7e-5 of a row's loss and 5e-2 of a gradient entry on the tiny models, and
1.5e-2 of the update in one step (checked by running the whole pack through the layers)."""

from __future__ import annotations

import copy
import types

import pytest
import torch

from tests.test_loss import make_trainer
from tests.test_packing import assert_packed_equals_padded, assert_same_sgd_step, family_rows, forward, spans
from vlsft.collator import VisionChatCollator
from vlsft.families import QWEN3_5_FAMILIES
from vlsft.packing import check_packing_support
from vlsft.packing.attention import PACKED_SDPA, use_packed_attention
from vlsft.packing.boundaries import ROW_BOUNDARY_KWARGS, row_boundaries
from vlsft.packing.collator import PackedCollator
from vlsft.packing.linear_attention import linear_attention_layers, rows_and_offsets
from vlsft.packing.plan import row_lengths
from vlsft.templates import training_template
from vlsft.testing.tiny_families import build_tiny

ARCHITECTURES = ["qwen3_5_think", "qwen3_5_moe"]  # the tiny dense and MoE hybrids (both with the think template)


def hybrid(architecture, checkpointing=False, one_call=False):
    """(packed-ready model copy in train mode, the rows collator). `one_call`: the linear-attention layers run once
    per pack on its rows padded (as under DeepSpeed ZeRO-3), not once per row."""
    model, processor = build_tiny(architecture, seed=0)
    model = copy.deepcopy(model).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    collator = VisionChatCollator(processor, training_template("qwen3_5_think"))
    use_packed_attention(model, one_call_per_layer=one_call)
    return model, collator


@pytest.mark.parametrize("one_call", [False, True], ids=["per_row", "one_call"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["no_checkpointing", "checkpointing"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_packed_hybrid_rows_equal_padded_rows(architecture, checkpointing, one_call):
    """Per-row losses and all gradients (1e-5 relative); the text model runs PACKED_SDPA, its linear-attention layers
    per row or once on the rows padded; with checkpointing, the decoder layers are recomputed in the backward with
    the same rows."""
    model, collator = hybrid(architecture, checkpointing, one_call)
    text_model = model.model.language_model
    assert model.config.get_text_config()._attn_implementation == PACKED_SDPA
    assert len(linear_attention_layers(text_model)) == 1
    assert text_model.gradient_checkpointing == checkpointing
    rows = family_rows()
    padded = collator(rows)
    packed = PackedCollator(collator, model=model)(rows)
    lengths = padded["attention_mask"].sum(-1).tolist()
    recomputed = []
    layer = text_model.layers[0]  # the linear-attention layer: count its forwards (twice with checkpointing)
    handle = layer.linear_attn.register_forward_hook(
        lambda module, args, kwargs, out: recomputed.append(kwargs), with_kwargs=True
    )
    try:
        # The gated delta rule's chunked scan sums each row in another order packed than padded: float32 noise
        # reaches 2e-5 of the largest entry of the small `dt_bias` gradient (every other gradient stays within 1e-5).
        assert_packed_equals_padded(model, padded, packed, lengths, gradient_tolerance=5e-5)
    finally:
        handle.remove()
    packed_calls = [kwargs for kwargs in recomputed if kwargs.get("cu_seq_lens_q") is not None]
    assert len(packed_calls) == (2 if checkpointing else 1)  # the recompute ran, with the pack's boundaries
    for kwargs in packed_calls:
        assert kwargs["cu_seq_lens_q"].tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]


@pytest.mark.parametrize("one_call", [False, True], ids=["per_row", "one_call"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_changing_one_packed_hybrid_row_leaves_the_others_unchanged(architecture, one_call):
    """Row 1's image or text changed: rows 0 and 2 keep their logits (to float rounding: the per-row slices are the
    same computation, but row 0's slice of a longer chunked delta-rule pass may round differently)."""
    model, collator = hybrid(architecture, one_call=one_call)
    model.eval()
    packer = PackedCollator(collator, model=model)
    base = packer(family_rows())
    other_image = packer(family_rows(second_image=(0, 0, 255)))
    lengths = collator(family_rows())["attention_mask"].sum(-1).tolist()
    row1 = list(spans(lengths))[1]
    other_tokens = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in base.items()}
    ids = other_tokens["input_ids"][0, row1]
    text = ~torch.isin(ids, torch.tensor(sorted(collator._vision_token_ids)))
    ids[text] = ids[text].flip(0)
    with torch.no_grad():
        reference = forward(model, base)
        changed = [forward(model, other_image), forward(model, other_tokens)]
    for logits in changed:
        assert not torch.allclose(logits[0, row1], reference[0, row1], atol=1e-4)  # the change is real
        for index, span in enumerate(spans(lengths)):
            if index != 1:
                torch.testing.assert_close(logits[0, span], reference[0, span], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_one_packed_hybrid_step_equals_the_padded_step(architecture, tmp_path):
    """Through `VLSFTTrainer` with gradient checkpointing on (the recipes' default): the 4 rows in one pack train the
    same SGD step as their padded batch, to 1e-4 of the update."""
    model, processor = build_tiny(architecture, seed=0)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = dict(gradient_checkpointing=True)
    padded = make_trainer(model, processor, tmp_path / "padded", per_device_train_batch_size=4, **config)
    packed = make_trainer(
        model, processor, tmp_path / "packed", per_device_train_batch_size=1, packing=True, max_length=4096, **config
    )
    assert packed.train_dataset.plan == [[0, 1, 2, 3]]
    batch = next(iter(packed.get_train_dataloader()))
    assert batch["input_ids"].shape == (1, sum(row_lengths(packed.train_dataset.dataset, padded.data_collator)))
    padded.train()
    packed.train()
    assert packed.state.log_history[0]["num_supervised_tokens"] == padded.state.log_history[0]["num_supervised_tokens"]
    assert_same_sgd_step(start, padded, packed)


def test_every_qwen3_5_template_packs_its_models():
    """The four Qwen3.5-generation templates collate the dense and the MoE model alike: each packs either."""
    for architecture in ARCHITECTURES:
        model, processor = build_tiny(architecture, seed=0)
        for family in QWEN3_5_FAMILIES:
            assert check_packing_support(model, VisionChatCollator(processor, training_template(family))) == "mrope"


def test_varlen_kernels_get_the_rows_of_the_pack():
    """What the GPU path hands fla and causal-conv1d (not run here: they are CUDA kernels): `cu_seqlens` from the
    text positions PackedCollator writes, and each token's row index as `seq_idx`."""
    positions = torch.cat([torch.arange(n) for n in (5, 3, 7)]).view(1, -1)
    mrope = torch.cat([positions.view(1, 1, -1), torch.zeros(3, 1, 15, dtype=torch.long)])  # 3D rows never read
    for layout in (positions, mrope):
        boundaries = row_boundaries(layout)
        assert boundaries["cu_seq_lens_q"].tolist() == [0, 5, 8, 15] and boundaries["cu_seq_lens_q"].dtype == torch.int32
        assert boundaries["max_length_q"] == boundaries["max_length_k"] == 7
    rows, offsets = rows_and_offsets(row_boundaries(positions)["cu_seq_lens_q"], 15)
    assert rows.tolist() == [0] * 5 + [1] * 3 + [2] * 7  # seq_idx, as int32
    assert offsets.tolist() == positions[0].tolist()
    assert row_boundaries(mrope[1:]) is None  # the 3 rope rows alone (a Qwen-VL model's own, for unpacked rows)
    assert row_boundaries(positions[:, 2:]) is None  # a continuation, not a pack


def test_the_padded_step_is_not_what_the_pack_would_train_without_restarting_the_state(tmp_path):
    """The bar above can fail: with the state running across rows (the linear-attention layers run over the whole
    pack, as transformers' torch fallback does when it ignores the boundaries), the step misses it."""
    model, processor = build_tiny("qwen3_5_think", seed=0)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    padded = make_trainer(model, processor, tmp_path / "padded", per_device_train_batch_size=4)
    packed = make_trainer(model, processor, tmp_path / "packed", per_device_train_batch_size=1, packing=True, max_length=4096)
    def whole_pack(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
        kwargs = {key: value for key, value in kwargs.items() if key not in ROW_BOUNDARY_KWARGS}
        return type(self).forward(self, hidden_states, None, None, **kwargs)

    for layer in linear_attention_layers(packed.model.model.language_model):
        layer.forward = types.MethodType(whole_pack, layer)
    padded.train()
    packed.train()
    after_padded = dict(padded.model.named_parameters())
    update = max((after_padded[n] - start[n]).abs().max() for n in start)
    difference = max((after_padded[n] - p).abs().max() for n, p in packed.model.named_parameters())
    assert difference > 1e-3 * update, float(difference / update)



@pytest.mark.slow
def test_packed_hybrid_step_under_zero3_on_two_processes_equals_the_padded_step_on_one(tmp_path):
    """Real `accelerate launch` with DeepSpeed ZeRO-3 over gloo, packs of 3 rows and 1 row (33 + 68 + 54 and 30 tokens),
    one per rank: the linear-attention layers run once per pack (every rank calls them equally often, whatever its
    rows), and the step equals one process's padded batch of the 4 rows."""
    from tests.scripts.one_step import parse, train_steps
    from tests.test_distributed import REPO, assert_same_step, launch, one_step_args
    from tests.test_packing import SCRIPT

    flags = {"family": "qwen3_5_think", "gradient_checkpointing": True}
    out = tmp_path / "packed_zero3.pt"
    launch([str(SCRIPT), *one_step_args(out, 1, packing=160, deepspeed=REPO / "configs/ds_zero3.json", **flags)])
    packed = torch.load(out)
    assert packed["world_size"] == 2 and "DeepSpeedEngine" in packed["wrapper"]
    padded, _ = train_steps(parse(one_step_args(tmp_path / "padded.pt", 4, **flags)))
    assert_same_step(packed, padded)
