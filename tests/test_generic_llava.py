"""LLaVA-1.5, ViP-LLaVA and LLaVA-OneVision on the generic exact path (`vlsft.testing.tiny_generic_llava`), beyond
the tests every generic family gets (`tests/test_generic_families.py`): what their templates need of the rule.
- LLaVA-1.5 and ViP-LLaVA write no control token between turns (`... ASSISTANT: Red. USER: ...`): the eos stops
  generation; it is appended and supervised after a final turn, and an earlier turn is supervised through its text.
- ViP-LLaVA's turns meet inside a word (`Red.###Human:`): what follows the cut tokenizes as a continuation.
- LLaVA-OneVision's generation prompt (`<|im_start|>assistant\\n`) differs from its history (`<|im_start|>assistant
  \\n`) in whitespace only: the turn starts after the history's whitespace; any other difference is still refused.
- The checkpoints' templates, whose generation markers leave the stop token out, are masked by the rule.
- LLaVA-OneVision's videos are refused by row on the generic path.
"""

from __future__ import annotations

import pytest
from transformers.utils.chat_template_utils import render_jinja_template
from trl.data_utils import prepare_multimodal_messages

from tests.test_families import supervised_texts
from tests.test_generic_families import tiny
from tests.conftest import IMAGE, _shapes, assistant, image, user
from vlsft.collation.rendering import Continuation, RowError
from vlsft.collator import VisionChatCollator
from vlsft.generic_masks import PrefixRuleError, assistant_spans, end_of_turn_token
from vlsft.testing.tiny_generic_llava import LLAVA_1_5_CHECKPOINT_TEMPLATE, LLAVA_ONEVISION_CHECKPOINT_TEMPLATE

CONTROL = ("<|im_start|>", "<|im_end|>", "<s>", "</s>")
# The turn structure of LLaVA-1.5's template: role prefixes in plain text, no control token anywhere.
VICUNA = (
    "{% for m in messages %}{{ m.role.upper() }}: {{ m.content }} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
# LLaVA-OneVision's: `<|im_start|>role ` then a newline before the text, but `<|im_start|>assistant\n` as the prompt.
SPACED_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }} \n{{ m.content }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVERSATION = [
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there."},
    {"role": "user", "content": "Colour?"},
    {"role": "assistant", "content": "Red."},
]


def renderer(template):
    def render(messages, add_generation_prompt):
        rendered, _ = render_jinja_template([messages], chat_template=template, add_generation_prompt=add_generation_prompt)
        return rendered[0]

    return render


def turns(text, spans):
    return [text[start:end] for start, end in spans]


def test_a_template_with_no_control_token_between_turns_stops_on_the_eos_after_the_final_turn():
    render = renderer(VICUNA)
    text, spans = assistant_spans(render, CONVERSATION, CONTROL, eos_token="</s>")
    assert text == render(CONVERSATION, False) + "</s>"
    # The earlier turn through its text (its trailing space starts the next `USER`), the final one through the eos.
    assert turns(text, spans) == [" Hi there.", " Red. </s>"]
    assert end_of_turn_token(render, CONTROL, "</s>") == "</s>"
    with pytest.raises(ValueError, match="no control token.*chat_template_path"):  # no eos: refused with the fix
        end_of_turn_token(render, CONTROL)
    # Nor does the eos stand in for a template without a generation prompt (no chat format: nothing cues the turn).
    uncued = renderer(VICUNA.replace("ASSISTANT:", ""))
    with pytest.raises(ValueError, match="only for a template that writes a generation prompt"):
        end_of_turn_token(uncued, CONTROL, "</s>")


def test_a_prompt_differing_from_the_history_in_trailing_whitespace_only_starts_the_turn_after_it():
    render = renderer(SPACED_CHATML)
    text, spans = assistant_spans(render, CONVERSATION, CONTROL)
    assert turns(text, spans) == ["Hi there.<|im_end|>", "Red.<|im_end|>"]
    assert text[: spans[0][0]].endswith("<|im_start|>assistant \n")
    # A prompt that differs in more than whitespace is still refused.
    other = SPACED_CHATML.replace("<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant:\n{% endif %}")
    with pytest.raises(PrefixRuleError, match=r"message 1 \(assistant\): the template renders the turn without"):
        assistant_spans(renderer(other), CONVERSATION, CONTROL)


def test_llava_supervises_each_answer_and_the_eos_after_the_final_one():
    _, processor = tiny("llava")
    collate = VisionChatCollator(processor, processor.chat_template)
    assert collate.family.end_of_turn == "</s>"
    row = _shapes()["multi_turn_later_images"][0]
    batch = collate([row])
    texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert texts == [" Yes, send one.", " A square.", " A circle on the left. </s>"]
    assert int(batch["input_ids"][0, -1]) == processor.tokenizer.eos_token_id


def test_vipllava_turns_that_meet_inside_a_word_tokenize_as_the_processor_does():
    _, processor = tiny("vipllava")
    collate = VisionChatCollator(processor, processor.chat_template)
    row = {"messages": [user(IMAGE, "Colour?"), assistant("Red."), user("And?"), assistant("Blue.")], "images": [image()]}
    pieces = collate.pieces(row)
    assert [text for text, _ in pieces if isinstance(text, Continuation)] == ["###Human: And?###Assistant:"]
    batch = collate([row])
    conversation = prepare_multimodal_messages(row["messages"], images=row["images"])
    reference = processor.apply_chat_template([conversation], tokenize=True, return_dict=True, return_tensors="pt")
    assert batch["input_ids"][0, :-1].tolist() == reference["input_ids"][0].tolist()  # + the appended eos
    texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert texts == [" Red.", " Blue.</s>"]


@pytest.mark.parametrize(
    ("family", "template", "expected"),
    [
        ("llava", LLAVA_1_5_CHECKPOINT_TEMPLATE, [" Yes, send one.", " A square.", " A circle on the left. </s>"]),
        ("llava_onevision", LLAVA_ONEVISION_CHECKPOINT_TEMPLATE,
         ["Yes, send one.<|im_end|>", "A square.<|im_end|>", "A circle on the left.<|im_end|>"]),
    ],
)
def test_checkpoint_templates_whose_markers_leave_out_the_stop_are_masked_by_the_rule(family, template, expected):
    """The llava-hf checkpoints ship these templates with generation markers around the answer text only: by their
    markers a model never learns to stop (and LLaVA-1.5's cut after `ASSISTANT: ` splits a token). A family without a
    record is masked by the rule instead, on the template as shipped."""
    _, processor = tiny(family)
    collate = VisionChatCollator(processor, template)
    assert collate.generic_masks
    batch = collate([_shapes()["multi_turn_later_images"][0]])
    assert supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0]) == expected


def test_llava_onevision_videos_are_refused_by_row():
    """LLaVA-OneVision's processor and template take videos; the generic path collates images only, so a video item
    (or a `videos` column) fails by name, never trains on a placeholder with no features behind it."""
    _, processor = tiny("llava_onevision")
    collate = VisionChatCollator(processor, processor.chat_template)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A dot."}]}]
    with pytest.raises(RowError, match=r"message 0 has a 'video' item: vlsft trains LlavaOnevisionProcessor \("):
        collate([{"messages": messages, "images": []}])
    with pytest.raises(RowError, match="not trained on videos"):
        collate([{"messages": [{"role": "user", "content": "What?"}, messages[1]], "images": [], "videos": ["a.mp4"]}])
