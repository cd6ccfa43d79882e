"""Command A Vision, LFM3-VL and Perception LM on the generic exact path (the parametrized tests of
tests/test_generic_families.py run on each): what each family's template makes vlsft supervise, and what it refuses by
row: videos (LFM3-VL's and Perception LM's processors take them, the generic path does not build them), and rows whose
earlier reasoning LFM3-VL's template drops."""

from __future__ import annotations

import copy

import pytest
from datasets import Dataset

from tests.test_families import supervised_texts
from tests.test_generic_families import tiny
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.collator import VisionChatCollator
from vlsft.data.validation import InvalidRowsError


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
    with pytest.raises(RowError, match=rf"batch row 0: message 0 has a 'video' item: vlsft trains {name} \(generic path\)"):
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
