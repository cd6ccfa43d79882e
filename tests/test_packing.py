"""Packing (`vlsft.packing`): rows packed into one sequence give each row exactly what it gets alone in a padded
batch (positions, logits, losses, gradients, one training step), no row sees another (bit for bit), and what cannot
be kept apart is refused."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from tests.conftest import IMAGE, _shapes, assistant, image, user
from tests.test_loss import make_trainer, rows_of_different_lengths
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collator import VisionChatCollator, training_collator
from vlsft.tokens import IGNORE_INDEX
from vlsft.packing import check_packing_support
from vlsft.packing.attention import PACKED_SDPA, use_packed_attention
from vlsft.packing.collator import PackedCollator
from vlsft.packing.plan import plan_packs, row_lengths
from vlsft.templates import training_template
from vlsft.testing.tiny_families import build_tiny
from vlsft.testing.tiny_video import write_moving_shape

SCRIPT = Path(__file__).parent / "scripts" / "one_step.py"
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
# Image rows, a multi-image row, a text-only row and a tool row whose tool response carries an image (Qwen3-VL).
QWEN_SHAPES = ["one_image_one_turn", "several_images_one_turn", "text_only", "tool_response_with_image", "multi_turn_later_images"]


def qwen_rows():
    shapes = _shapes()
    rows = [copy.deepcopy(shapes[name][0]) for name in QWEN_SHAPES]
    for row in rows:
        row.setdefault("tools", None)
    return rows


def family_rows(second_image=(255, 0, 0)):
    """Rows every packable family renders: two image rows of different sizes and a text-only row."""
    return [
        {"messages": [user(IMAGE, "What colour?"), assistant("Green, quite green.")], "images": [image((0, 255, 0))]},
        {"messages": [user(IMAGE, "And this one?"), assistant("A longer answer.")], "images": [image(second_image, (64, 80))]},
        {"messages": [user("No picture here."), assistant("Then text only.")], "images": []},
    ]


@lru_cache
def tiny_family(family: str):
    return build_tiny(family, seed=0)


def spans(lengths):
    start = 0
    for length in lengths:
        yield slice(start, start + length)
        start += length


def forward(model, batch):
    return model(**{"use_cache": False, **{k: v for k, v in batch.items() if k != "labels"}}).logits.float()


def row_nll(logits, labels):
    """Summed next-token NLL of one row (logits and labels of that row only)."""
    return torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="sum")


def per_row_losses_and_grads(model, batch, lengths, packed_layout):
    """(each row's summed NLL, the logits, the gradients of their sum) for a padded or a packed batch of rows."""
    model.zero_grad()
    logits = forward(model, batch)
    if packed_layout:
        per_row = [row_nll(logits[0, span], batch["labels"][0, span]) for span in spans(lengths)]
    else:
        per_row = [row_nll(logits[i, :n], batch["labels"][i, :n]) for i, n in enumerate(lengths)]
    torch.stack(per_row).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return torch.stack(per_row).detach(), logits.detach(), grads


def assert_packed_equals_padded(model, padded, packed, lengths, gradient_tolerance=1e-5):
    """Per-row losses (1e-5 relative) and all gradients (`gradient_tolerance` of each gradient's largest entry) of the
    packed batch equal the padded batch's; the vision tower gets a gradient. Returns the packed logits."""
    padded_losses, _, padded_grads = per_row_losses_and_grads(model, padded, lengths, packed_layout=False)
    packed_losses, packed_logits, packed_grads = per_row_losses_and_grads(model, packed, lengths, packed_layout=True)
    torch.testing.assert_close(packed_losses, padded_losses, rtol=1e-5, atol=0)
    assert padded_grads.keys() == packed_grads.keys()
    assert any("visual" in name and grad.abs().sum() > 0 for name, grad in packed_grads.items())
    for name, grad in padded_grads.items():
        scale = float(grad.abs().max())
        torch.testing.assert_close(
            packed_grads[name], grad, rtol=1e-5, atol=gradient_tolerance * scale, msg=lambda m: f"{name}: {m}"
        )
    return packed_logits


def assert_same_sgd_step(start, padded, packed):
    """The packed trainer's weights after its step equal the padded trainer's (1e-4 of the update, which is real)."""
    after_padded = dict(padded.model.named_parameters())
    update = max((after_padded[n] - start[n]).abs().max() for n in start)
    difference = max((after_padded[n] - p).abs().max() for n, p in packed.model.named_parameters())
    assert update > 1e-3 and difference <= 1e-4 * update, float(difference / update)


# -- the plan ------------------------------------------------------------------------------------------------------


def test_best_fit_decreasing_plan_is_within_budget_tight_and_deterministic():
    lengths = [700, 300, 300, 1200, 100, 524, 900, 50, 50, 1024, 200]
    plan = plan_packs(lengths, 1024, seed=3)
    assert sorted(i for pack in plan for i in pack) == list(range(len(lengths)))  # every row, once
    assert all(sum(min(lengths[i], 1024) for i in pack) <= 1024 for pack in plan)
    # Longest first, each into the tightest pack with room: 1200 (cut to 1024) and 1024 alone, 700+300 (24 left),
    # 524+300+200, 900+100 (24 left); no pack has room for 50 then, so the 50s open a new one.
    assert sorted(sorted(lengths[i] for i in pack) for pack in plan) == sorted(
        [[1200], [1024], [100, 900], [300, 700], [200, 300, 524], [50, 50]]
    )
    assert plan == plan_packs(lengths, 1024, seed=3)
    ties = [10] * 8
    assert plan_packs(ties, 30, seed=0) != plan_packs(ties, 30, seed=1)  # the seed breaks ties


# -- positions, logits, losses and gradients: packed equals padded -----------------------------------------------


def test_packed_rows_equal_padded_rows_positions_losses_and_gradients():
    model, processor = tiny_family("qwen3_vl")
    model = copy.deepcopy(model).eval()
    use_packed_attention(model)  # as VLSFTTrainer trains packed rows: sdpa row by row
    assert model.config.get_text_config()._attn_implementation == PACKED_SDPA
    collator = training_collator(processor, VLSFTConfig(output_dir="unused", report_to="none", max_length=None))
    rows = qwen_rows()
    padded = collator(rows)
    packed = PackedCollator(collator, model=model)(rows)
    lengths = padded["attention_mask"].sum(-1).tolist()
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    torch.testing.assert_close(packed["pixel_values"], padded["pixel_values"], rtol=0, atol=0)  # images in row order
    torch.testing.assert_close(packed["image_grid_thw"], padded["image_grid_thw"], rtol=0, atol=0)

    # Positions: each row's slice equals the model's own 3D positions for the row alone (its `compute_3d_position_ids`,
    # the path a forward without position ids takes), under text positions restarting at 0.
    for index, (row, span) in enumerate(zip(rows, spans(lengths))):
        alone = collator([row])
        expected = model.model.compute_3d_position_ids(
            input_ids=alone["input_ids"], inputs_embeds=None, image_grid_thw=alone.get("image_grid_thw"),
            attention_mask=alone["attention_mask"], mm_token_type_ids=alone["mm_token_type_ids"],
        )
        if expected is None:  # text only: the model's default positions
            expected = torch.arange(lengths[index]).view(1, 1, -1).expand(3, 1, -1)
        torch.testing.assert_close(packed["position_ids"][1:, :, span], expected, rtol=0, atol=0)
        assert packed["position_ids"][0, 0, span].tolist() == list(range(lengths[index]))
        # The same targets, except the row's first token, which a padded batch never predicts either.
        assert packed["labels"][0, span][1:].tolist() == padded["labels"][index, : lengths[index]][1:].tolist()
        assert packed["labels"][0, span.start] == IGNORE_INDEX
    assert (packed["labels"][0, 1:] != IGNORE_INDEX).sum() == (padded["labels"][:, 1:] != IGNORE_INDEX).sum()

    assert_packed_equals_padded(model, padded, packed, lengths)


# -- isolation, bit for bit ----------------------------------------------------------------------------------------


FAMILIES_AND_ATTENTION = [
    (family, attention)
    for family in ("qwen3_vl", "qwen3_vl_moe", "qwen2_5_vl", "llava_next", "idefics3", "smolvlm")
    for attention in ("sdpa", "eager", PACKED_SDPA)  # sdpa and eager with transformers' block-diagonal mask
]


@pytest.mark.parametrize("family,attention", FAMILIES_AND_ATTENTION)
def test_changing_one_packed_row_leaves_every_other_row_bit_for_bit_unchanged(family, attention):
    model, processor = tiny_family(family)
    model = copy.deepcopy(model).eval()
    if attention == PACKED_SDPA:
        use_packed_attention(model)
    else:
        model.set_attn_implementation(attention)
    assert check_packing_support(model, VisionChatCollator(processor, training_template(family))) in ("mrope", "1d")
    collator = PackedCollator(VisionChatCollator(processor, training_template(family)), model=model)
    base = collator(family_rows())
    other_image = collator(family_rows(second_image=(0, 0, 255)))  # row 1's picture, same size
    lengths = [int(n) for n in collator.rows_collator(family_rows())["attention_mask"].sum(-1)]
    row1 = list(spans(lengths))[1]
    assert not torch.equal(other_image["pixel_values"], base["pixel_values"])
    # Row 1's text tokens reversed in place (its image tokens stay where they are): other tokens, same length.
    other_tokens = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in base.items()}
    ids = other_tokens["input_ids"][0, row1]
    text = ~torch.isin(ids, torch.tensor(sorted(collator.rows_collator._vision_token_ids)))
    ids[text] = ids[text].flip(0)
    assert not torch.equal(ids, base["input_ids"][0, row1])

    with torch.no_grad():
        reference = forward(model, base)
        changed = [forward(model, other_image), forward(model, other_tokens)]
        padded = forward(model, collator.rows_collator(family_rows()))
    for logits in changed:
        assert not torch.equal(logits[0, row1], reference[0, row1])  # the change is real
        for index, span in enumerate(spans(lengths)):
            if index != 1:
                assert torch.equal(logits[0, span], reference[0, span]), f"row {index} changed with row 1"
    for index, span in enumerate(spans(lengths)):  # and each row is what it is in a padded batch
        torch.testing.assert_close(reference[0, span], padded[index, : lengths[index]], rtol=1e-5, atol=1e-5)


# -- videos ---------------------------------------------------------------------------------------------------------

VIDEO = {"type": "video"}


def user_with(*parts):
    """A user turn of placeholders (IMAGE, VIDEO) and text."""
    return {"role": "user", "content": [p if isinstance(p, dict) else user(p)["content"][0] for p in parts]}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Clips of 3 s at 6 fps and 2 s at 4 fps (Qwen3-VL samples 2 fps: 3 and 2 temporal groups, each a run of video
    tokens after its timestamp), so the two videos of a pack have different grids (and Qwen2.5-VL different
    `second_per_grid_ts`), and one more of the second's size and length whose square moves the other way."""
    root = tmp_path_factory.mktemp("packing_clips")
    return {
        "right": str(write_moving_shape(root / "right.mp4", num_frames=18, fps=6, size=(96, 64), direction="right")),
        "down": str(write_moving_shape(root / "down.mp4", num_frames=8, fps=4, size=(64, 48), direction="down")),
        "left": str(write_moving_shape(root / "left.mp4", num_frames=8, fps=4, size=(64, 48), direction="left")),
    }


def video_rows(clips, third_video="down"):
    """A video row, an image row, an image + video row (two turns) and a text-only row."""
    return [
        {"messages": [user_with(VIDEO, "Which way?"), assistant("Right.")], "images": [], "videos": [clips["right"]]},
        {"messages": [user(IMAGE, "What colour?"), assistant("Green, quite green.")], "images": [image((0, 255, 0))],
         "videos": []},
        {"messages": [user_with(IMAGE, VIDEO, "Same colour?"), assistant("Yes."),
                      user("Direction?"), assistant("Down.")],
         "images": [image((255, 0, 0), (128, 64))], "videos": [clips[third_video]]},
        {"messages": [user("No picture here."), assistant("Then text only.")], "images": [], "videos": []},
    ]


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe", "qwen2_5_vl"])
def test_packed_video_rows_equal_padded_rows_and_no_row_sees_another(family, clips):
    """Video, image, image + video and text-only rows packed: each row's 3D positions are the model's own for the
    row alone (its image and video grids, Qwen2.5-VL's `second_per_grid_ts`), its loss and the gradients equal the
    padded batch's (1e-5), and another video in one row leaves every other row's logits bit for bit unchanged."""
    model, processor = tiny_family(family)
    model = copy.deepcopy(model).eval()
    use_packed_attention(model)  # as VLSFTTrainer trains packed rows
    # A pixel budget under which the two videos' frames (and the two images) keep grids of different sizes.
    rows_collator = VisionChatCollator(processor, training_template(family), video_max_pixels=16384)
    collator = PackedCollator(rows_collator, model=model)
    rows = video_rows(clips)
    padded = rows_collator(rows)
    packed = collator(rows)
    lengths = padded["attention_mask"].sum(-1).tolist()
    assert packed["input_ids"].shape == (1, sum(lengths))
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        if key in padded:  # vision tensors in row order, untouched
            torch.testing.assert_close(packed[key], padded[key], rtol=0, atol=0)
    # Grids that differ (in time and space) between the two videos and between the two images.
    first, second = padded["video_grid_thw"]
    assert first[0] != second[0] and not torch.equal(first[1:], second[1:])
    assert not torch.equal(*padded["image_grid_thw"])
    if family == "qwen2_5_vl":
        assert padded["second_per_grid_ts"][0] != padded["second_per_grid_ts"][1]
    if family == "qwen3_vl":  # each video is several runs of video tokens: per-row counts cannot come from runs
        video_runs = (packed["mm_token_type_ids"][0] == 2).int().diff().eq(1).sum()
        assert video_runs == int(padded["video_grid_thw"][:, 0].sum()) > 2

    for index, (row, span) in enumerate(zip(rows, spans(lengths))):
        alone = rows_collator([row])
        extra = {"second_per_grid_ts": alone["second_per_grid_ts"]} if "second_per_grid_ts" in alone else {}
        expected = model.model.compute_3d_position_ids(
            input_ids=alone["input_ids"], inputs_embeds=None, image_grid_thw=alone.get("image_grid_thw"),
            video_grid_thw=alone.get("video_grid_thw"), attention_mask=alone["attention_mask"],
            mm_token_type_ids=alone["mm_token_type_ids"], past_key_values=None, **extra,
        )
        if expected is None:  # text only: the model's default positions
            expected = torch.arange(lengths[index]).view(1, 1, -1).expand(3, 1, -1)
        assert torch.equal(packed["position_ids"][1:, :, span], expected), f"row {index}"
        assert packed["position_ids"][0, 0, span].tolist() == list(range(lengths[index]))
        assert packed["labels"][0, span][1:].tolist() == padded["labels"][index, : lengths[index]][1:].tolist()

    reference = assert_packed_equals_padded(model, padded, packed, lengths)

    # Row 2's video swapped for a clip of the same size and length: same tokens, other pixels.
    other = collator(video_rows(clips, third_video="left"))
    assert torch.equal(other["input_ids"], packed["input_ids"])
    assert not torch.equal(other["pixel_values_videos"], packed["pixel_values_videos"])
    with torch.no_grad():
        changed = forward(model, other)
    for index, span in enumerate(spans(lengths)):
        if index == 2:
            assert not torch.equal(changed[0, span], reference[0, span])  # the change is real
        else:
            assert torch.equal(changed[0, span], reference[0, span]), f"row {index} changed with row 2's video"

    # Without the rows' video counts, a batch with videos is refused rather than guessed from the token runs.
    with pytest.raises(ValueError, match="videos_per_row"):
        collator.pack(rows_collator(rows))


def test_packed_video_step_equals_the_padded_step(tiny, clips, tmp_path):
    """Through `VLSFTTrainer`: the video, image, image + video and text-only rows planned into one pack (their
    lengths counted with the video tokens) train the same SGD step as the padded batch of the 4 rows."""
    model, processor = tiny
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = video_rows(clips)
    padded = make_trainer(model, processor, tmp_path / "padded", rows=rows, per_device_train_batch_size=4)
    packed = make_trainer(
        model, processor, tmp_path / "packed", rows=rows, per_device_train_batch_size=1, packing=True, max_length=512
    )
    assert packed.train_dataset.plan == [[0, 1, 2, 3]]
    batch = next(iter(packed.get_train_dataloader()))
    lengths = row_lengths(Dataset.from_list(rows), padded.data_collator)
    assert batch["input_ids"].shape == (1, sum(lengths)) and len(batch["video_grid_thw"]) == 2
    padded.train()
    packed.train()
    assert packed.state.log_history[0]["num_supervised_tokens"] == padded.state.log_history[0]["num_supervised_tokens"]
    assert_same_sgd_step(start, padded, packed)


# -- refusals ------------------------------------------------------------------------------------------------------


def test_what_packing_cannot_keep_apart_is_refused():
    model, processor = tiny_family("gemma3")  # not on the allowlist: families are admitted one by one, with these tests
    with pytest.raises(ValueError, match="packing is not supported"):
        check_packing_support(model, VisionChatCollator(processor, training_template("gemma3")))
    with pytest.raises(ValueError, match="packing is not supported for the Gemma 3 family"):
        PackedCollator(VisionChatCollator(processor, training_template("gemma3")))
    qwen, qwen_processor = tiny_family("qwen3_vl")
    qwen = copy.deepcopy(qwen)
    # Continuous batching's paged attention (generation only) takes no pack.
    qwen.config._attn_implementation = "paged|flash_attention_2"
    qwen.config.get_text_config()._attn_implementation = "paged|flash_attention_2"
    with pytest.raises(ValueError, match=r"attn_implementation='paged\|flash_attention_2'"):
        check_packing_support(qwen, VisionChatCollator(qwen_processor, training_template("qwen3_vl")))
    with pytest.raises(ValueError, match="need the model's own 3D rope positions"):
        PackedCollator(VisionChatCollator(qwen_processor, training_template("qwen3_vl")))
    for bad in (dict(packing_strategy="wrapped"), dict(max_length=None), dict(train_sampling_strategy="group_by_length")):
        with pytest.raises(ValueError, match="packing"):
            VLSFTConfig(output_dir="unused", report_to="none", packing=True, **bad)


# -- training ------------------------------------------------------------------------------------------------------


def test_one_packed_sgd_step_equals_the_padded_step(tiny, tmp_path):
    model, processor = tiny
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    padded = make_trainer(model, processor, tmp_path / "padded", per_device_train_batch_size=4)
    # 4 rows of 29, 62, 25 and 50 tokens: two packs of at most 100 tokens, both in one micro-batch.
    packed = make_trainer(model, processor, tmp_path / "packed", per_device_train_batch_size=2, packing=True, max_length=100)
    assert [sorted(pack) for pack in packed.train_dataset.plan] == [[0, 1], [2, 3]]
    assert row_lengths(rows_of_different_lengths(), padded.data_collator) == [29, 62, 25, 50]
    padded.train()
    packed.train()
    batch = next(iter(packed.get_train_dataloader()))  # what the packed step trained on: both packs, one sequence
    assert batch["input_ids"].shape == (1, 29 + 62 + 25 + 50) and batch["position_ids"].shape == (4, 1, 166)
    assert packed.state.log_history[0]["num_supervised_tokens"] == padded.state.log_history[0]["num_supervised_tokens"]
    assert_same_sgd_step(start, padded, packed)


def test_packed_weighted_step_equals_the_padded_weighted_step(tiny, tmp_path):
    """Per-turn weights (and `train_on_eos=False`) travel with their tokens into the pack: the weighted packed step
    equals the weighted padded step."""
    from tests.test_weights import rows_only

    model, processor = tiny
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = dict(rows=rows_only(), train_on_eos=False)
    padded = make_trainer(model, processor, tmp_path / "padded", per_device_train_batch_size=4, **config)
    packed = make_trainer(
        model, processor, tmp_path / "packed", per_device_train_batch_size=4, packing=True, max_length=4096, **config
    )
    batch = next(iter(packed.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and batch["label_weights"].shape == batch["labels"].shape
    assert (batch["label_weights"][batch["labels"] == -100] == 0).all()
    padded.train()
    packed.train()
    assert packed.state.log_history[0]["loss"] == pytest.approx(padded.state.log_history[0]["loss"], rel=1e-5)
    assert_same_sgd_step(start, padded, packed)


def test_padding_free_step_equals_the_padded_step_and_unsupported_models_are_refused(tiny, tmp_path):
    model, processor = tiny
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    padded = make_trainer(model, processor, tmp_path / "padded", per_device_train_batch_size=4)
    # padding_free without packing: each micro-batch of rows end to end, no plan.
    free = make_trainer(model, processor, tmp_path / "free", per_device_train_batch_size=4, padding_free=True)
    assert isinstance(free.train_dataset, Dataset) and isinstance(free.data_collator, PackedCollator)  # rows, no plan
    assert next(iter(free.get_train_dataloader()))["input_ids"].shape == (1, 166)
    padded.train()
    free.train()
    assert_same_sgd_step(start, padded, free)

    gemma, gemma_processor = tiny_family("gemma3")
    with pytest.raises(ValueError, match="packing is not supported for the Gemma 3 family"):  # from the processor
        VLSFTTrainer(copy.deepcopy(gemma), args=VLSFTConfig(output_dir=str(tmp_path / "g"), report_to="none", packing=True),
                     train_dataset=Dataset.from_list(family_rows()), processing_class=gemma_processor)
    with pytest.raises(ValueError, match="do not pass `data_collator`"):
        VLSFTTrainer(copy.deepcopy(model), args=VLSFTConfig(output_dir=str(tmp_path / "c"), report_to="none", packing=True),
                     data_collator=padded.data_collator, train_dataset=Dataset.from_list(rows_of_different_lengths()),
                     processing_class=processor)


@pytest.mark.parametrize("layout", ["ddp", "zero3"])
def test_packed_step_on_two_processes_equals_the_padded_step_on_one(layout, tmp_path):
    """Real `accelerate launch` over gloo, DDP or DeepSpeed ZeRO-3: each rank trains one pack of two rows; the step
    equals one process's padded batch of the 4 rows (tests/scripts/one_step.py, the reference run in-process)."""
    from tests.scripts.one_step import parse, train_steps
    from tests.test_distributed import REPO, assert_same_step, launch, one_step_args

    flags = {"deepspeed": REPO / "configs/ds_zero3.json"} if layout == "zero3" else {}
    out = tmp_path / f"packed_{layout}.pt"
    launch([str(SCRIPT), *one_step_args(out, 1, packing=100, **flags)])
    packed = torch.load(out)
    assert packed["world_size"] == 2 and packed["packs"] == [2, 2]  # two packs of two rows: one per rank
    assert ("DeepSpeedEngine" if layout == "zero3" else "DistributedDataParallel") in packed["wrapper"]
    padded, _ = train_steps(parse(one_step_args(tmp_path / "padded.pt", 4)))
    assert_same_step(packed, padded)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_packed_demo_recipe_learns_as_well_as_the_padded_demo(tmp_path):
    """recipes/demo_packed.yaml: the demo's rows, optimizer and supervised-token budget, in packs. The padded demo
    (tests/test_demo.py, docs/quickstart.md) reaches an eval loss of ~0.18 and ~50% exact answers from 6.53 and 0%."""
    import json

    repo = Path(__file__).resolve().parent.parent
    command = [ACCELERATE, "launch", "--num_processes", "1", "--cpu", "vlsft/train.py"]
    command += ["--config", "recipes/demo_packed.yaml", "--output_dir", str(tmp_path / "demo_packed")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    history = json.loads((tmp_path / "demo_packed" / "trainer_state.json").read_text())["log_history"]
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    accuracies = [entry["eval_answer_accuracy"] for entry in history if "eval_answer_accuracy" in entry]
    assert eval_losses[0] > 6 and eval_losses[-1] <= 0.25, eval_losses
    assert accuracies[-1] >= 0.4, accuracies
