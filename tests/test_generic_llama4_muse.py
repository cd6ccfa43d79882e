"""Llama 4 and Muse Glimmer on the generic path: what their templates and models need beyond the parametrized tests
of `tests/test_generic_families.py`.
- Muse Glimmer's default system prompt writes today's date: a row that would hold it is refused, naming the variable
  that pins it (`vlsft.collation.template_clock`); pinned, or with a system message of its own, it trains.
- Muse Glimmer ends a tool call with `<|eom|>` or `<|eot|>` depending on the next message: such a row is refused naming
  the message and both tokens; Llama 4 ends every tool call with `<|eot|>`, so the same row trains there.
- Given tools, Llama 4's template writes the first user message's items as Python text: refused with the fix.
- Llama 4's language model is a causal LM holding the LM head: the loss reads its decoder's hidden states and equals
  the model's own full-logits loss; its bfloat16 pixels go into a float32 model.
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from transformers.utils.chat_template_utils import render_jinja_template
from trl.data_utils import prepare_multimodal_messages

from tests.conftest import IMAGE, TOOLS, assistant, image, tool, user, zoom_call
from tests.test_families import rows_of_different_lengths, supervised_texts
from tests.test_generic_families import rule_texts, tiny
from vlsft import VLSFTConfig, VLSFTTrainer
from vlsft.collation.rendering import RowError
from vlsft.collation.template_clock import ClockReadError, refuse_clock_reading, without_clock
from vlsft.collator import VisionChatCollator
from vlsft.data.validation import InvalidRowsError
from vlsft.generic_masks import as_content_items
from vlsft.input_dtypes import raise_input_precision
from vlsft.tokens import IGNORE_INDEX

PINNED = {"current_date": "2026-01-04"}


def _row(*messages, images=()):
    return {"messages": list(messages), "images": list(images)}


def test_muse_glimmer_rows_holding_todays_date_are_refused_naming_the_variable_that_pins_it(tmp_path):
    _, processor = tiny("muse_glimmer")
    row = _row(user(IMAGE, "Colour?"), assistant("Red."), images=[image()])
    with pytest.raises(RowError, match=r"batch row 0: the chat template writes today's date.*`current_date`"):
        VisionChatCollator(processor, processor.chat_template)([row])
    pinned = VisionChatCollator(processor, processor.chat_template, template_kwargs=PINNED)
    assert "Current date: 2026-01-04." in processor.tokenizer.decode(pinned([row])["input_ids"][0])
    # A system message of its own: the template writes no date, nothing to pin.
    own_system = _row({"role": "system", "content": "Be brief."}, *row["messages"], images=row["images"])
    VisionChatCollator(processor, processor.chat_template)([own_system])

    # Before training: validation names the row and the fix; pinned recipe-wide (or per row), the rows train.
    rows = Dataset.from_list(rows_of_different_lengths()[:2])
    args = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=1, save_strategy="no")
    with pytest.raises(InvalidRowsError, match=r"(?s)row 0.*strftime_now.*current_date"):
        VLSFTTrainer(copy.deepcopy(tiny("muse_glimmer")[0]), args=VLSFTConfig(**args), train_dataset=rows,
                     processing_class=processor)
    VLSFTTrainer(copy.deepcopy(tiny("muse_glimmer")[0]), args=VLSFTConfig(**args, chat_template_kwargs=PINNED),
                 train_dataset=rows, processing_class=processor)


def test_a_template_is_rendered_without_the_clock_and_a_date_it_writes_is_refused():
    """A template that computes the date and never writes it (Llama 4's `date_string`) renders as stock; one that
    writes it is refused, saying where it has no variable to pin the date."""
    computes = "\nHi{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}"
    ours, _ = render_jinja_template([[]], chat_template=without_clock(computes))
    assert ours == render_jinja_template([[]], chat_template=computes)[0] == ["\nHi"]
    refuse_clock_reading(ours[0], computes)
    writes = "Today: {{ strftime_now('%Y') }}"
    ours, _ = render_jinja_template([[]], chat_template=without_clock(writes))
    with pytest.raises(ClockReadError, match="takes no date variable to pin it"):
        refuse_clock_reading(ours[0], writes)


TOOL_CALL_THEN_TEXT = [user(IMAGE, "Zoom left."), assistant("", [zoom_call("left")]), assistant("Zoomed.")]


def test_muse_glimmer_tool_call_whose_end_token_depends_on_the_next_message_is_refused_naming_it():
    _, processor = tiny("muse_glimmer")
    collate = VisionChatCollator(processor, processor.chat_template, template_kwargs=PINNED)
    with pytest.raises(
        RowError,
        match=r"message 1 \(assistant\): the template ends it with <\|eot\|> as the last message but with "
        r"<\|eom\|> once message 2 follows",
    ):
        collate([_row(*copy.deepcopy(TOOL_CALL_THEN_TEXT), images=[image()])])
    # Followed by the tool's answer, the call ends with `<|eot|>` either way: exact.
    answered = [*copy.deepcopy(TOOL_CALL_THEN_TEXT[:2]), tool("done"), assistant("A dot.")]
    batch = collate([_row(*answered, images=[image()])])
    texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    assert texts[0].endswith("</atem:function_calls><|eot|>") and texts[1] == " to=user<|message|>A dot.<|eot|>"


def test_llama4_ends_every_tool_call_with_eot_so_a_tool_call_before_more_text_trains_exactly():
    _, processor = tiny("llama4")
    collate = VisionChatCollator(processor, processor.chat_template)
    batch = collate([_row(*copy.deepcopy(TOOL_CALL_THEN_TEXT), images=[image()])])
    texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    conversation = as_content_items(prepare_multimodal_messages(copy.deepcopy(TOOL_CALL_THEN_TEXT), images=[image()]))
    assert texts == rule_texts(processor, conversation)
    assert texts == ['<|python_start|><|python_end|>{"name": "zoom", "parameters": {"region": "left"}}<|eot|>',
                     "Zoomed.<|eot|>"]


def test_llama4_rows_whose_content_its_template_writes_as_python_text_are_refused_with_the_fix():
    """Given tools, Llama 4's template writes the first user message with `|trim`: a list of content items (as TRL's
    data path gives every message) would become `[{'type': 'text', ...}]`. A text-only message is given as its
    string, as at inference; one with an image (whose placeholder the template would lose) is refused naming the
    message. With a system message and `tools_in_user_message: false` the tools go to the system message and the
    row trains exactly."""
    _, processor = tiny("llama4")
    messages = [user("Zoom?"), assistant("", [zoom_call("left")]), tool("done"), assistant("A dot.")]
    collate = VisionChatCollator(processor, processor.chat_template)
    batch = collate([{**_row(*copy.deepcopy(messages)), "tools": TOOLS}])
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert "'type'" not in text and "Zoom?" in text.split("<|header_start|>assistant")[0]
    texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    as_read = [{**messages[0], "content": "Zoom?"}, *as_content_items(messages[1:])]
    assert texts == rule_texts(processor, as_read, TOOLS)
    with_image = [user(IMAGE, "Zoom?"), *messages[1:]]
    with pytest.raises(RowError, match=r"message 0: the chat template writes its content as Python text.*"
                                       r"tools_in_user_message: false"):
        collate([{**_row(*copy.deepcopy(with_image), images=[image()]), "tools": TOOLS}])
    kwargs = {"tools_in_user_message": False}
    collate = VisionChatCollator(processor, processor.chat_template, template_kwargs=kwargs)
    with_system = [{"role": "system", "content": "Use the tools."}, *copy.deepcopy(with_image)]
    batch = collate([{**_row(*copy.deepcopy(with_system), images=[image()]), "tools": TOOLS}])
    texts = supervised_texts(processor.tokenizer, batch["input_ids"][0], batch["labels"][0])
    conversation = as_content_items(prepare_multimodal_messages(copy.deepcopy(with_system), images=[image()]))
    assert texts == rule_texts(processor, conversation, TOOLS, **kwargs)
    assert "zoom" in processor.tokenizer.decode(batch["input_ids"][0]).split("<|header_start|>user")[0]


def test_muse_glimmer_videos_are_refused_by_row():
    """Muse Glimmer's processor and template take videos; the generic path does not collate them."""
    _, processor = tiny("muse_glimmer")
    collate = VisionChatCollator(processor, processor.chat_template, template_kwargs=PINNED)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}, assistant("A dot.")]
    with pytest.raises(RowError, match=r"message 0 has a 'video' item: vlsft trains MuseGlimmerProcessor"):
        collate([_row(*messages)])


def test_llama4_loss_reads_the_decoder_under_its_causal_lm_and_equals_the_full_logits_loss(tmp_path):
    """Llama 4's language model holds the LM head (no backbone returns hidden states alone): the supervised loss
    takes the decoder's hidden states and equals the model's own next-token loss over its full logits."""
    model, processor = tiny("llama4")
    trainer = VLSFTTrainer(
        copy.deepcopy(model),
        args=VLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=1, save_strategy="no",
                         loss_chunk_size=7),
        train_dataset=Dataset.from_list(rows_of_different_lengths()[:2]), processing_class=processor,
    )
    batch = trainer.data_collator(rows_of_different_lengths()[:2])
    assert batch["pixel_values"].dtype == torch.bfloat16  # Llama 4's image processor, whatever the model's dtype
    loss = trainer.compute_loss(trainer.model, dict(batch))
    inputs = raise_input_precision({k: v for k, v in batch.items() if k != "labels"}, model)
    logits = copy.deepcopy(model)(**inputs).logits.float()
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_lower_precision_inputs_are_raised_to_the_models_precision_and_nothing_else_changes():
    model = torch.nn.Linear(2, 2)
    pixels, ids, exact = torch.ones(2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.long), torch.ones(2)
    raised = raise_input_precision({"pixel_values": pixels, "input_ids": ids, "other": exact}, model)
    assert raised["pixel_values"].dtype == torch.float32 and torch.equal(raised["pixel_values"], pixels.float())
    assert raised["input_ids"] is ids and raised["other"] is exact
    half = raise_input_precision({"pixel_values": exact}, model.to(torch.bfloat16))
    assert half["pixel_values"] is exact  # never lowered: the model casts where it needs to
