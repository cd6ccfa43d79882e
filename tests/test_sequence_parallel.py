"""Ulysses sequence parallelism (`sequence_parallel_size`, vlsft/sequence_parallel.py).

In-process: the field is validated; unsupported families are refused with the reason; the split keeps every
supervised target once (labels shifted before the split, the boundary token kept), pads lengths not divisible by
N after every real token, and hands each shard exactly its own DeepStack visual features and mRoPE positions.
Multi-process (real `accelerate launch`, 2 CPU processes over gloo, under a timeout): one SGD step with SP=2 on
DeepSpeed equals the 1-process step on the same rows within 1e-4 of the update."""

from __future__ import annotations

import types

import pytest
import torch

from tests.scripts.one_step import parse, train_steps
from tests.test_recipe import check_error, minimal
from tests.test_distributed import REPO, SCRIPT, assert_same_step, launch, one_step_args
from vlsft import VLSFTConfig
from vlsft.sequence_parallel import SPLIT_KWARG, SequenceParallel, check_sequence_parallel_model
from vlsft.tokens import IGNORE_INDEX


def shards(size: int) -> list[SequenceParallel]:
    return [
        SequenceParallel(group=None, size=size, rank=rank, data_parallel_rank=0, data_parallel_size=1, core_attention="sdpa")
        for rank in range(size)
    ]


# -- the field --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["2", 0, -1, 1.5, float("nan"), True])
def test_size_must_be_an_integer_of_at_least_one(tmp_path, value):
    with pytest.raises(ValueError, match="sequence_parallel_size` must be an integer >= 1"):
        VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, sequence_parallel_size=value)


def test_size_must_divide_the_world_size(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="must divide the number of processes \\(3\\)"):
        VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, sequence_parallel_size=2)


def test_huge_size_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="must divide the number of processes"):
        VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, sequence_parallel_size=10**9)


@pytest.mark.parametrize(
    "setting, message",
    [({"packing": True, "max_length": 64}, "packing"), ({"average_tokens_across_devices": False}, "average_tokens")],
)
def test_unsupported_settings_refused(tmp_path, monkeypatch, setting, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=message):
        VLSFTConfig(output_dir=str(tmp_path), report_to="none", sequence_parallel_size=2, **setting)


def _model_with(model_type, heads=4, kv_heads=2, attention="sdpa"):
    text = types.SimpleNamespace(num_attention_heads=heads, num_key_value_heads=kv_heads, _attn_implementation=attention)
    config = types.SimpleNamespace(model_type=model_type, get_text_config=lambda: text)
    return types.SimpleNamespace(config=config)


@pytest.mark.parametrize(
    "model, message",
    [
        (_model_with("qwen3_5"), "GatedDeltaNet"),
        (_model_with("qwen2_5_vl"), "supported for qwen3_vl only"),
        (_model_with("qwen3_vl", heads=6), "must divide the 6 attention heads"),
        (_model_with("qwen3_vl", attention="flash_attention_2"), "sdpa"),
    ],
    ids=["qwen3_5", "qwen2_5_vl", "heads", "flash"],
)
def test_unsupported_models_refused_with_the_reason(model, message):
    with pytest.raises(ValueError, match=message):
        check_sequence_parallel_model(model, types.SimpleNamespace(sequence_parallel_size=4))


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"layout": {"strategy": "ddp", "gpus_per_node": 4}}, "runs on DeepSpeed's engine"),
        ({"layout": {"strategy": "zero3", "gpus_per_node": 6}}, "must divide the 6 processes"),
        ({"layout": {"strategy": "zero3", "gpus_per_node": 8}, "data": {"eval_fraction": 0.1}}, "Evaluation"),
        ({"layout": {"strategy": "zero2", "gpus_per_node": 8}, "training": {"sequence_parallel_size": "4"}},
         "sequence_parallel_size` must be an integer"),
    ],
    ids=["ddp", "indivisible", "eval", "string"],
)
def test_recipe_refusals(sections, message):
    training = {"sequence_parallel_size": 4, **sections.pop("training", {})}
    check_error(minimal(training=training, **sections), message)


# -- the split --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, length", [(2, 10), (2, 11), (4, 13)])
def test_every_target_once_across_the_group(size, length):
    """The shards' targets, laid end to end, are the whole sequence's shifted labels (padded with IGNORE): the target
    of each shard's last position is the next shard's first token. Weights follow their targets."""
    generator = torch.Generator().manual_seed(length)
    labels = torch.randint(0, 50, (2, length), generator=generator)
    labels[0, :3] = IGNORE_INDEX
    labels[1, length // 2 - 1 : length // 2 + 2] = IGNORE_INDEX
    weights = torch.rand(2, length, generator=generator)
    local = [parallel.local_targets(labels, weights) for parallel in shards(size)]
    padded = shards(size)[0].bounds(length)[0]
    assert padded % size == 0 and padded - length < size
    # `supervised_nll` pairs hidden position t with label t+1: drop each shard's leading position.
    targets = torch.cat([shard_labels[:, 1:] for shard_labels, _ in local], 1)
    shifted = torch.full((2, padded), IGNORE_INDEX)
    shifted[:, : length - 1] = labels[:, 1:]
    assert torch.equal(targets, shifted)
    shard_weights = torch.cat([shard_w[:, 1:] for _, shard_w in local], 1)
    assert torch.equal(shard_weights[:, : length - 1], weights[:, 1:])
    # The first shard's last position is supervised with the second shard's first label (no target lost).
    boundary = padded // size
    assert targets[0, boundary - 1] == labels[0, boundary]


def test_split_inputs_slice_positions_and_deepstack_features_per_shard():
    """Each shard gets its slice of the (padded) embeddings and mRoPE rows, a text row for Ulysses, no local mask,
    and exactly the DeepStack features of its own visual positions, in the model's row-major order."""
    batch, length, hidden = 2, 7, 3
    embeds = torch.randn(batch, length, hidden)
    positions = torch.arange(3 * batch * length).view(3, batch, length)
    visual = torch.zeros(batch, length, dtype=torch.bool)
    visual[0, 2:5] = True  # spans the boundary at 4
    visual[1, 1] = visual[1, 6] = True
    features = torch.arange(int(visual.sum()) * hidden, dtype=torch.float).view(-1, hidden)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 5:] = 0
    parts = []
    for parallel in shards(2):
        kwargs = {"inputs_embeds": embeds, "position_ids": positions, "attention_mask": mask,
                  "visual_pos_masks": visual, "deepstack_visual_embeds": [features, features + 100]}
        parts.append(parallel._split_inputs(None, (), kwargs)[1])
    assert all(part["attention_mask"] is None and part[SPLIT_KWARG] is True for part in parts)
    assert torch.equal(torch.cat([p["inputs_embeds"] for p in parts], 1)[:, :length], embeds)
    assert torch.equal(torch.cat([p["inputs_embeds"] for p in parts], 1)[:, length:], torch.zeros(batch, 1, hidden))
    gathered = torch.cat([p["position_ids"] for p in parts], -1)
    assert torch.equal(gathered[1:, :, :length], positions)
    assert torch.equal(gathered[0], torch.arange(8).expand(batch, 8))
    local_masks = [p["visual_pos_masks"] for p in parts]
    for shard, part in zip(local_masks, parts):
        assert [len(f) for f in part["deepstack_visual_embeds"]] == [int(shard.sum())] * 2
    # Rebuilt per row-major order of the whole sequence, the shards' features are the model's features.
    rebuilt = torch.zeros_like(features)
    order = (torch.nn.functional.pad(visual, (0, 1)).flatten().cumsum(0) - 1).view(batch, 8)
    for rank, part in enumerate(parts):
        start, end = rank * 4, rank * 4 + 4
        rebuilt[order[:, start:end][local_masks[rank]]] = part["deepstack_visual_embeds"][0]
    assert torch.equal(rebuilt, features)


def test_left_padding_refused():
    mask = torch.tensor([[0, 1, 1, 1]])
    kwargs = {"inputs_embeds": torch.zeros(1, 4, 2), "position_ids": torch.zeros(3, 1, 4, dtype=torch.long),
              "attention_mask": mask}
    with pytest.raises(ValueError, match="right padding"):
        shards(2)[0]._split_inputs(None, (), kwargs)


def test_evaluation_refused_on_a_split_model():
    """A model set up for sequence parallelism refuses a forward with labels in eval mode (its per-row sums would be
    those of one shard), before any collective."""
    from vlsft.loss import attach_supervised_head
    from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl

    model, _ = build_tiny_qwen3_vl(seed=0)
    attach_supervised_head(model)
    model._vlsft_sequence_parallel = shards(2)[0]
    model.eval()
    ids = torch.ones(1, 6, dtype=torch.long)
    with pytest.raises(NotImplementedError, match="Evaluation under `sequence_parallel_size > 1`"):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), supervised_labels=ids)


# -- one step over 2 processes ----------------------------------------------------------------------------------


def rows_seen(rank_batches):
    return [{k: v for k, v in batch.items() if k != "shard"} for batch in rank_batches]


def run_sequence_parallel(tmp_path, name, deepspeed, rows, batch, processes=2, **flags):
    """SP=2 over `processes` ranks (SP groups [0, 1], [2, 3]), `batch` rows per rank; the 1-process reference trains
    the global batch (`batch` x data-parallel groups) in one micro-batch."""
    out = tmp_path / f"{name}.pt"
    flags = {"rows": rows, "loss_chunk_size": 4, **flags}
    launch([str(SCRIPT), *one_step_args(out, batch, sequence_parallel=2, deepspeed=REPO / deepspeed, **flags)],
           processes=processes)
    distributed = torch.load(out)
    assert distributed["world_size"] == processes and distributed["wrapper"] == "DeepSpeedEngine"
    reference_batch = batch * processes // 2
    reference, _ = train_steps(parse(one_step_args(tmp_path / f"{name}_reference.pt", reference_batch, **flags)))
    ranks = distributed["micro_batches"]
    for first in range(0, processes, 2):
        # The ranks of an SP group trained the same rows (sharded by data-parallel rank), each on its own half.
        assert rows_seen(ranks[first]) == rows_seen(ranks[first + 1])
        assert [b["shard"] for b in ranks[first]] != [b["shard"] for b in ranks[first + 1]]
    if processes > 2:  # the data-parallel groups trained different rows
        assert rows_seen(ranks[0]) != rows_seen(ranks[2])
    assert ranks[0] and all(b["images"] for b in ranks[0])
    return distributed, reference


def test_zero2_images_equals_one_process(tmp_path):
    """SP=2 on ZeRO-2, 4 image rows with answers of 2 to ~40 tokens in one micro-batch: supervised tokens on both
    shards and across the boundary; the step equals the 1-process step."""
    distributed, reference = run_sequence_parallel(tmp_path, "sp2_zero2", "configs/ds_zero2.json", "lengths", batch=4)
    batch = distributed["micro_batches"][0][0]
    boundary = batch["shard"][1] if batch["shard"][1] else batch["shard"][2]
    positions = {position for _, position in batch["targets"]}
    assert min(positions) < boundary <= max(positions)  # supervised targets on both shards
    assert_same_step(distributed, reference)


@pytest.mark.slow
def test_zero3_all_supervised_tokens_on_one_shard(tmp_path):
    """SP=2 on ZeRO-3 with gradient checkpointing, rows whose supervised tokens all fall on the second shard: the
    first rank supervises nothing and still takes part in every collective; the layers recomputed in the backward
    pass go through Ulysses again; the step equals the 1-process step."""
    distributed, reference = run_sequence_parallel(
        tmp_path, "sp2_zero3", "configs/ds_zero3.json", "one_shard", batch=2, gradient_checkpointing=True
    )
    batch = distributed["micro_batches"][0][0]
    boundary = batch["shard"][1] if batch["shard"][1] else batch["shard"][2]
    assert all(position >= boundary for _, position in batch["targets"]), (boundary, batch["targets"])
    assert_same_step(distributed, reference)


@pytest.mark.slow
def test_zero2_video_and_image_rows_equals_one_process(tmp_path):
    """SP=2 on ZeRO-2, a micro-batch of a video row, an image row and two text rows: the DeepStack features of both
    modalities (joined in the model's order) are split with their positions; the step equals the 1-process step."""
    distributed, reference = run_sequence_parallel(tmp_path, "sp2_video", "configs/ds_zero2.json", "video_mixed", batch=4)
    assert all(batch["videos"] for batch in distributed["micro_batches"][0])
    assert_same_step(distributed, reference)


@pytest.mark.slow
def test_zero2_sp2_by_dp2_four_processes(tmp_path):
    """SP=2 x DP=2 (4 processes) on ZeRO-2, 2 image rows per data-parallel group: each group reads its own rows,
    each supervised token counts once over the 4 ranks; the step equals the 1-process step on the 4 rows."""
    distributed, reference = run_sequence_parallel(tmp_path, "sp2_dp2", "configs/ds_zero2.json", "lengths", batch=2,
                                                   processes=4)
    assert_same_step(distributed, reference)
