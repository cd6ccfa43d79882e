"""The embedded demo dataset: deterministic, every kind of row well formed, tool responses carry the zoomed picture,
and the training collator supervises exactly the assistant turns of every kind (tool rows included)."""

from __future__ import annotations

import io

import pytest

from tests.test_masks import supervised_runs
from vlsft.testing import demo_data
from vlsft.collator import VisionChatCollator
from vlsft.tokens import IGNORE_INDEX
from vlsft.data.rows import count_image_placeholders, load_image
from vlsft.templates import training_template
from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl_processor


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def fingerprint(rows):
    return [(row["kind"], row["messages"], row["tools"], [png_bytes(load_image(i)) for i in row["images"]]) for row in rows]


@pytest.fixture(scope="module")
def rows():
    return demo_data.generate_rows(120, seed=0)


@pytest.fixture(scope="module")
def demo_processor():
    return build_tiny_qwen3_vl_processor(extra_text="demo-shapes")


def test_same_arguments_give_the_same_rows_and_pictures(rows):
    assert fingerprint(demo_data.generate_rows(120, seed=0)) == fingerprint(rows)


def test_seed_and_split_change_the_rows(rows):
    other_seed = demo_data.generate_rows(120, seed=1)
    eval_split = demo_data.generate_rows(120, seed=0, split="eval")
    assert fingerprint(other_seed) != fingerprint(rows)
    assert fingerprint(eval_split) != fingerprint(rows)
    # Another random stream: only the odd simple picture (one shape) can coincide with a training picture.
    train_pictures = {png_bytes(row["images"][0]) for row in demo_data.generate_rows(400, seed=0)}
    shared = [row for row in eval_split if png_bytes(row["images"][0]) in train_pictures]
    assert len(shared) <= 0.05 * len(eval_split)


def test_every_kind_appears_and_rows_are_well_formed(rows):
    assert {row["kind"] for row in rows} == set(demo_data.KIND_WEIGHTS)
    for row in rows:
        messages = row["messages"]
        assert messages[0]["role"] == "user" and messages[-1]["role"] == "assistant"
        assert messages[-1]["content"][0]["text"].strip()
        assert count_image_placeholders(messages) == len(row["images"])
        assert all(image.size == (demo_data.IMAGE_SIZE, demo_data.IMAGE_SIZE) for image in row["images"])
        if row["kind"] == "multi_turn":
            assert sum(m["role"] == "assistant" for m in messages) >= 2


def test_answers_match_the_picture():
    """Colour answers are the colour of the pixels at the shape's cell; counts count the coloured cells."""
    rng = demo_data.random.Random(7)
    for _ in range(50):
        image, content = demo_data.draw_scene(rng)
        for cell, name in enumerate(demo_data.CELLS):
            crop = image.crop(((cell % 2) * 32, (cell // 2) * 32, (cell % 2) * 32 + 32, (cell // 2) * 32 + 32))
            colours = {colour for _, colour in crop.getcolors(32 * 32)} - {demo_data.BACKGROUND}
            if name in content:
                assert colours == {demo_data.COLOURS[content[name][0]]}
            else:
                assert not colours
        question, answer = demo_data.ask(rng, "count", content)
        assert answer == str(len(content))


def test_tool_rows_call_zoom_and_the_response_carries_the_zoomed_cell(rows):
    tool_rows = [row for row in rows if row["kind"] == "tool"]
    assert tool_rows
    for row in tool_rows:
        assert row["tools"] == [demo_data.ZOOM_TOOL]
        user, call, response, answer = row["messages"]
        region = call["tool_calls"][0]["function"]["arguments"]["region"]
        assert region in demo_data.CELLS and region in user["content"][-1]["text"]
        assert response["role"] == "tool" and response["content"][0] == {"type": "image"}
        assert png_bytes(row["images"][1]) == png_bytes(demo_data.zoom(row["images"][0], region))
    assert all(row["tools"] is None for row in rows if row["kind"] != "tool")


def test_load_demo_split_is_a_dataset_and_caches(tmp_path):
    first = demo_data.load_demo_split("eval", rows=24, seed=3, cache_dir=str(tmp_path))
    assert {"messages", "images", "tools", "kind", "length"} <= set(first.column_names) and len(first) == 24
    assert any(tmp_path.iterdir())
    again = demo_data.load_demo_split("eval", rows=24, seed=3, cache_dir=str(tmp_path))
    assert fingerprint(again) == fingerprint(first)
    fresh = demo_data.load_demo_split("eval", rows=24, seed=3)
    assert fingerprint(fresh) == fingerprint(first)
    with pytest.raises(ValueError, match="unknown demo split"):
        demo_data.load_demo_split("dev", rows=4)


def expected_runs(row):
    """What each assistant turn must render to, written from the row, not from the template."""
    runs = []
    for message in row["messages"]:
        if message["role"] != "assistant":
            continue
        if message.get("tool_calls"):
            region = message["tool_calls"][0]["function"]["arguments"]["region"]
            runs.append(f'<tool_call>\n{{"name": "zoom", "arguments": {{"region": "{region}"}}}}\n</tool_call><|im_end|>')
        else:
            runs.append(message["content"][0]["text"] + "<|im_end|>")
    return runs


def test_collator_supervises_exactly_the_assistant_turns_of_dataset_rows(demo_processor):
    """Rows read back from Arrow (None-filled keys, images as stored) mask exactly, batched with other kinds, and no
    image token (of the question or of the tool response) is supervised."""
    collator = VisionChatCollator(demo_processor, training_template("qwen3_vl"))
    dataset = demo_data.load_demo_split("train", rows=40, seed=0)
    by_kind = {}
    for row in dataset:
        by_kind.setdefault(row["kind"], row)
    batch_rows = list(by_kind.values())
    batch = collator(batch_rows)
    image_pad = demo_processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"] == image_pad).sum()) == 4 * sum(len(row["images"]) for row in batch_rows)
    for i, row in enumerate(batch_rows):
        assert supervised_runs(demo_processor.tokenizer, batch["input_ids"][i], batch["labels"][i]) == expected_runs(row)
        assert not bool(((batch["input_ids"][i] == image_pad) & (batch["labels"][i] != IGNORE_INDEX)).any())


def test_demo_vocabulary_keeps_rows_short(demo_processor):
    """The tokenizer trained on the demo's text encodes its words whole (a tool row stays a few hundred tokens)."""
    tokenizer = demo_processor.tokenizer
    for word in ["yellow", " triangle", " bottom", " zoom", "assistant"]:
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word


def test_length_buckets_set_only_the_long_rows_apart(rows, demo_processor):
    """`length` (for group_by_length) puts all single questions in one bucket and ranks rows as their tokens do."""
    collator = VisionChatCollator(demo_processor, training_template("qwen3_vl"))
    single = {row["length"] for row in rows if row["kind"] in ("colour", "shape", "count", "position")}
    assert len(single) == 1
    tokens = {row["kind"]: len(collator.tokenize_rows([row])[0].input_ids) for row in rows}
    lengths = {kind: [row["length"] for row in rows if row["kind"] == kind] for kind in tokens}
    assert tokens["tool"] > 4 * tokens["colour"]
    assert min(lengths["tool"]) >= max(lengths["multi_turn"]) and min(lengths["multi_turn"]) > max(single)
