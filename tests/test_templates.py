"""A generation-marked training template (Qwen3.8's) renders exactly what its stock template renders, keeps prefixes,
and each generation block is what the model generates after the generation prompt, through the end-of-turn token;
Qwen3-VL trains on its stock template itself; a processor without a template fails with the fix in the message."""

from __future__ import annotations

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from tests.conftest import IMAGE, TOOLS, assistant, tool, user, zoom_call
from vlsft.data.rows import normalize_messages
from importlib import resources

from vlsft.templates import (
    detect_family,
    has_generation_markers,
    stock_template,
    resolve_training_template,
    training_template,
)

QWEN3_VL = stock_template("qwen3_vl")  # masked by the incremental-rendering rule: no marked copy
STOCK = stock_template("qwen3_8")
TRAINING = training_template("qwen3_8")


def render(template, messages, tools=None, add_generation_prompt=False, with_spans=False):
    text, spans = render_jinja_template(
        [normalize_messages(messages)],
        tools=tools,
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        return_assistant_tokens_mask=with_spans,
    )
    return (text[0], spans[0]) if with_spans else text[0]


CONVERSATIONS = {
    "plain": ([user("Hi"), assistant("Hello!")], None),
    "image": ([user(IMAGE, "What is it?"), assistant("A cat.")], None),
    "system_string": ([{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hey")], None),
    "system_list": ([{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, user("Hi"), assistant("Hey")], None),
    "tools_no_system": ([user("Zoom"), assistant("", [zoom_call()]), tool("ok"), assistant("Done.")], TOOLS),
    "tools_with_system": (
        [{"role": "system", "content": "You can zoom."}, user(IMAGE, "Zoom"), assistant("Sure.", [zoom_call(), zoom_call("right")])],
        TOOLS,
    ),
    "multi_turn": ([user(IMAGE, "A?"), assistant("B."), user(IMAGE, "C?"), assistant("D.")], None),
    "consecutive_tools_with_images": (
        [user("Go"), assistant("", [zoom_call(), zoom_call("right")]), tool(IMAGE, "left"), tool(IMAGE, "right"), assistant("Both red.")],
        TOOLS,
    ),
    "empty_answer": ([user("Say nothing"), assistant("")], None),
}
# Qwen3.8's stock template iterates tool arguments as a mapping: arguments given as a JSON string fail in both.
STRING_TOOL_ARGUMENTS = [
    user("Go"),
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "zoom", "arguments": '{"region": "top"}'}}]},
]


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_training_template_renders_like_the_stock_template(name, add_generation_prompt):
    messages, tools = CONVERSATIONS[name]
    assert render(TRAINING, messages, tools, add_generation_prompt) == render(STOCK, messages, tools, add_generation_prompt)


def test_string_tool_arguments_fail_in_the_training_template_as_in_the_stock_one():
    for template in (STOCK, TRAINING):
        with pytest.raises(TypeError, match="mapping"):
            render(template, STRING_TOOL_ARGUMENTS, TOOLS)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_prefix_preservation(name):
    """Rendering the conversation up to each assistant turn, with the generation prompt, is a prefix of the full
    rendering: what the model sees at inference is what it was trained on."""
    messages, tools = CONVERSATIONS[name]
    full = render(TRAINING, messages, tools)
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = render(TRAINING, messages[:i], tools, add_generation_prompt=True)
            assert full.startswith(prompt)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_each_generation_block_is_the_assistant_body_with_its_end_of_turn(name):
    messages, tools = CONVERSATIONS[name]
    text, spans = render(TRAINING, messages, tools, with_spans=True)
    assert len(spans) == sum(m["role"] == "assistant" for m in messages)
    turns = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    for (start, end), i in zip(spans, turns):
        # The block starts where the generation prompt ends (the cue and the opened think block stay in the prompt)
        # and ends on the end-of-turn token: the newline after it is never generated.
        assert text[:start] == render(TRAINING, messages[:i], tools, add_generation_prompt=True)
        assert text[start:end].endswith("<|im_end|>") and text[end:].startswith("\n")
        assert "<|im_start|>" not in text[start:end]


def test_template_resolution():
    assert detect_family(QWEN3_VL) == "qwen3_vl"
    assert detect_family(QWEN3_VL + "\n") == "qwen3_vl"  # Hub copies differ in trailing whitespace
    assert resolve_training_template(QWEN3_VL) == QWEN3_VL and not has_generation_markers(QWEN3_VL)
    assert detect_family(STOCK) == "qwen3_8"
    assert resolve_training_template(STOCK) == TRAINING
    assert resolve_training_template(TRAINING) == TRAINING
    custom = "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    assert has_generation_markers(custom) and resolve_training_template(custom) == custom
    # A template vlsft has no marked copy of is trained as it is, masked by the incremental-rendering rule.
    unknown = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert resolve_training_template(unknown) == unknown
    with pytest.raises(ValueError, match="chat_template_path"):
        resolve_training_template(None)


def test_trainer_rejects_an_unknown_template_with_the_fix(tiny, tmp_path):
    from datasets import Dataset

    from vlsft import VLSFTConfig, VLSFTTrainer
    from vlsft.testing.tiny_qwen3_vl import build_tiny_qwen3_vl_processor

    model, _ = tiny
    processor = build_tiny_qwen3_vl_processor(chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")
    dataset = Dataset.from_list([{"messages": [user("Hi"), assistant("Yo")], "images": []}])
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(ValueError, match="chat_template_path"):
        VLSFTTrainer(model, args=args, train_dataset=dataset, processing_class=processor)
    # ... and the fix works: a marked template passed by path is used as is.
    trl_marked = resources.files("trl").joinpath("chat_templates", "qwen3_vl_training.jinja").read_text()
    marked = tmp_path / "marked.jinja"
    marked.write_text(trl_marked)
    args = VLSFTConfig(output_dir=str(tmp_path), report_to="none", chat_template_path=str(marked))
    trainer = VLSFTTrainer(model, args=args, train_dataset=dataset, processing_class=processor)
    assert trainer.training_chat_template == trl_marked
