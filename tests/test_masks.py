"""The supervised tokens are exactly what each assistant turn renders to: decoded and compared with hand-written
text, on every conversation shape, alone and batched; vision and padding tokens are never supervised."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trl.data_utils import prepare_multimodal_messages

from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.tokens import IGNORE_INDEX
from vlsft.templates import stock_template, training_template

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
SHAPE_NAMES = [
    "one_image_one_turn",
    "multi_turn_later_images",
    "several_images_one_turn",
    "system_string",
    "system_list",
    "tool_call_with_text",
    "tool_call_without_text",
    "tool_response_with_image",
    "empty_answer",
    "user_imitates_template",
    "text_only",
]


@pytest.fixture(scope="module")
def collator(tiny):
    return VisionChatCollator(tiny[1], training_template("qwen3_vl"))


def supervised_runs(tokenizer, input_ids, labels):
    """Decoded text of each contiguous run of supervised tokens."""
    runs, current = [], []
    for token, label in zip(input_ids.tolist(), labels.tolist()):
        if label != IGNORE_INDEX:
            assert label == token, "a supervised label must be the token itself"
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


@pytest.mark.parametrize("name", SHAPE_NAMES)
def test_supervised_text_is_exactly_each_assistant_turn(collator, processor, shapes, name):
    row, expected = shapes[name]
    batch = collator([row])
    assert supervised_runs(processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == expected


@pytest.mark.parametrize("name", SHAPE_NAMES)
def test_no_vision_or_padding_token_is_supervised(collator, processor, shapes, name):
    rows = [shapes[name][0], shapes["several_images_one_turn"][0]]  # a longer row forces padding on one of them
    batch = collator(rows)
    vision_ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids(VISION_TOKENS))
    supervised = batch["labels"] != IGNORE_INDEX
    assert not (supervised & torch.isin(batch["input_ids"], vision_ids)).any()
    assert not (supervised & (batch["attention_mask"] == 0)).any()
    # No system, user or tool text either: every supervised token lies inside an assistant turn.
    for i in range(len(rows)):
        text = processor.tokenizer.decode(batch["input_ids"][i][supervised[i]])
        assert "<|im_start|>" not in text and "<tool_response>" not in text


def test_labels_identical_alone_and_in_a_padded_batch(collator, shapes):
    rows = [shapes[name][0] for name in SHAPE_NAMES]
    batch = collator(rows)
    for i, row in enumerate(rows):
        alone = collator([row])
        length = alone["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][i, :length], alone["input_ids"][0])
        assert torch.equal(batch["labels"][i, :length], alone["labels"][0])
        assert (batch["labels"][i, length:] == IGNORE_INDEX).all()
        assert (batch["attention_mask"][i, length:] == 0).all()


def test_image_tokens_match_the_image_grids(collator, processor, shapes):
    rows = [shapes[name][0] for name in SHAPE_NAMES]
    batch = collator(rows)
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = processor.image_processor.merge_size ** 2
    assert int((batch["input_ids"] == image_pad).sum()) == int(batch["image_grid_thw"].prod(-1).sum()) // merge
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum())
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == image_pad).long())


# Shapes TRL's own data path can express (it rejects images inside tool responses).
PROCESSOR_SHAPES = [n for n in SHAPE_NAMES if n not in ("tool_response_with_image",)]


def test_inputs_identical_to_the_processor(collator, processor, shapes):
    """input_ids, attention_mask, pixel_values, image_grid_thw and mm_token_type_ids are what the stock processor
    produces for the same conversations; vlsft only adds the labels."""
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")

    def reference(rows, tools=None):
        conversations = [prepare_multimodal_messages(row["messages"], images=row["images"]) for row in rows]
        return processor.apply_chat_template(
            conversations,
            tools=tools,
            chat_template=stock_template("qwen3_vl"),
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "right"},
        )

    for name in PROCESSOR_SHAPES:  # one at a time, each with its own tools
        row = shapes[name][0]
        ours, theirs = collator([row]), reference([row], row.get("tools"))
        for key in keys:
            if key in theirs or key in ours:
                assert torch.equal(ours[key], theirs[key]), (name, key)
    rows = [shapes[name][0] for name in PROCESSOR_SHAPES if "tools" not in shapes[name][0]]
    ours, theirs = collator(rows), reference(rows)  # and as one padded batch
    for key in keys:
        assert torch.equal(ours[key], theirs[key]), key


def test_datasets_rows_mask_like_python_rows(collator, shapes, tmp_path):
    """Arrow storage adds None-valued keys to every content item and turns images into {bytes, path} dicts; a row
    read back from `datasets` must collate to the same tensors as the Python row."""
    names = ["one_image_one_turn", "tool_call_with_text", "tool_response_with_image", "text_only", "system_list"]
    rows = [shapes[name][0] for name in names]
    for row in rows:
        row.setdefault("tools", None)
    dataset = Dataset.from_list(rows)
    dataset.to_parquet(tmp_path / "rows.parquet")
    from_disk = Dataset.from_parquet(str(tmp_path / "rows.parquet"))
    expected = collator(rows)
    for source in (dataset, from_disk):
        got = collator([source[i] for i in range(len(source))])
        for key in ("input_ids", "labels", "image_grid_thw", "pixel_values"):
            assert torch.equal(got[key], expected[key]), key


def test_image_paths_relative_to_image_root(tiny, shapes, tmp_path):
    row, expected = shapes["multi_turn_later_images"]
    for i, img in enumerate(row["images"]):
        img.save(tmp_path / f"img{i}.png")
    path_row = {**row, "images": ["img0.png", str(tmp_path / "img1.png")]}
    collator = VisionChatCollator(tiny[1], training_template("qwen3_vl"), image_root=str(tmp_path))
    assert torch.equal(collator([path_row])["pixel_values"], collator([row])["pixel_values"])
    assert supervised_runs(tiny[1].tokenizer, *[collator([path_row])[k][0] for k in ("input_ids", "labels")]) == expected


def test_single_image_column_and_inline_images(collator, shapes):
    row, expected = shapes["one_image_one_turn"]
    single = {"messages": row["messages"], "image": row["images"][0]}
    inline = {"messages": [dict(m) for m in row["messages"]]}
    inline["messages"][0] = {"role": "user", "content": [{"type": "image", "image": row["images"][0]}, row["messages"][0]["content"][1]]}
    reference = collator([row])
    for variant in (single, inline):
        got = collator([variant])
        assert torch.equal(got["input_ids"], reference["input_ids"])
        assert torch.equal(got["labels"], reference["labels"])


def test_placeholder_image_mismatch_names_the_row(collator, shapes):
    good = shapes["one_image_one_turn"][0]
    bad = {**shapes["one_image_one_turn"][0], "images": [good["images"][0]] * 2}
    with pytest.raises(RowError, match="batch row 1: 1 image placeholder\\(s\\) but 2 image\\(s\\)"):
        collator([good, bad])


def test_full_loss_mode_supervises_every_text_token(tiny, shapes):
    row, _ = shapes["tool_response_with_image"]
    collator = VisionChatCollator(tiny[1], training_template("qwen3_vl"), assistant_only_loss=False)
    batch = collator([row])
    vision_ids = torch.tensor(tiny[1].tokenizer.convert_tokens_to_ids(VISION_TOKENS))
    is_vision = torch.isin(batch["input_ids"], vision_ids)
    assert ((batch["labels"] != IGNORE_INDEX) == ~is_vision).all()
