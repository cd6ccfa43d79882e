"""The incremental-rendering rule (`vlsft.generic_masks`) on small templates of each kind: a turn with an end-of-turn
marker, a turn without one (GLM-4.1V style), a template that rewrites history, and one whose turns render apart from
their generation prompt. No model: the rule only renders."""

from __future__ import annotations

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from vlsft.generic_masks import PrefixRuleError, assistant_spans, end_of_turn_token

CONTROL = ("<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<think>", "</think>")

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Drops the reasoning of every assistant turn but the last one (as LFM2.5-VL and Qwen3.5 do before the last user
# message): the rendering of an earlier turn changes once later messages follow.
DROPS_HISTORY = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and m.reasoning and loop.last %}<think>{{ m.reasoning }}</think>{% endif %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# GLM-4.1V's turn structure: no end-of-turn marker, the next role token stops generation.
NO_END_MARKER = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def renderer(template):
    def render(messages, add_generation_prompt):
        return render_jinja_template([messages], chat_template=template, add_generation_prompt=add_generation_prompt)[0][0]

    return render


def turns(text, spans):
    return [text[start:end] for start, end in spans]


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there."},
    {"role": "user", "content": "Colour?"},
    {"role": "assistant", "content": "Red."},
]


def test_each_turn_is_supervised_through_its_end_of_turn_marker_and_not_the_newline_after_it():
    text, spans = assistant_spans(renderer(CHATML), CONVERSATION, CONTROL)
    assert text == renderer(CHATML)(CONVERSATION, False)
    assert turns(text, spans) == ["Hi there.<|im_end|>", "Red.<|im_end|>"]
    assert text[: spans[0][0]].endswith("<|im_start|>assistant\n")  # the cue stays in the prompt
    assert end_of_turn_token(renderer(CHATML), CONTROL) == "<|im_end|>"


def test_a_template_that_rewrites_history_is_refused_naming_the_message():
    messages = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi.", "reasoning": "They greet me."},
        {"role": "user", "content": "Colour?"},
        {"role": "assistant", "content": "Red.", "reasoning": "It is red."},
    ]
    with pytest.raises(PrefixRuleError, match=r"message 1 \(assistant\): its rendering changes once the later"):
        assistant_spans(renderer(DROPS_HISTORY), messages, CONTROL)
    # Without reasoning in the earlier turn, nothing is rewritten: the last turn's reasoning is supervised.
    messages[1].pop("reasoning")
    text, spans = assistant_spans(renderer(DROPS_HISTORY), messages, CONTROL)
    assert turns(text, spans) == ["Hi.<|im_end|>", "<think>It is red.</think>Red.<|im_end|>"]


def test_a_turn_without_end_marker_supervises_the_stop_token_after_it_and_the_final_one_gets_it_appended():
    render = renderer(NO_END_MARKER)
    text, spans = assistant_spans(render, CONVERSATION, CONTROL)
    assert text == render(CONVERSATION, False) + "<|user|>"  # the final turn learns to stop too
    assert turns(text, spans) == ["Hi there.<|user|>", "Red.<|user|>"]
    assert end_of_turn_token(render, CONTROL) == "<|user|>"


def test_a_turn_rendered_apart_from_its_generation_prompt_is_refused():
    # The generation prompt opens a reasoning block that the rendered turn does not have.
    template = CHATML.replace("<|im_start|>assistant\n{% endif %}", "<|im_start|>assistant\n<think>{% endif %}")
    with pytest.raises(PrefixRuleError, match=r"message 2 \(assistant\): the template renders the turn without"):
        assistant_spans(renderer(template), CONVERSATION, CONTROL)


def test_a_template_that_writes_no_stop_token_at_all_is_refused_with_the_fix():
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    with pytest.raises(ValueError, match="no control token.*chat_template_path"):
        end_of_turn_token(renderer(template), CONTROL)


# Mistral's Pixtral-style templates: the system prompt is written into the user message that is the last message.
SYSTEM_IN_LAST_USER = (
    "{% if messages[0].role == 'system' %}{% set system = messages[0].content %}{% set rest = messages[1:] %}"
    "{% else %}{% set rest = messages %}{% endif %}"
    "{% for m in rest %}{% if m.role == 'user' %}[INST]{% if loop.last and system is defined %}{{ system }}\n\n"
    "{% endif %}{{ m.content }}[/INST]{% else %}{{ m.content }}</s>{% endif %}{% endfor %}"
)


def test_a_template_that_moves_the_system_prompt_to_the_last_user_message_is_refused_naming_the_message():
    """At inference the system prompt sits in the prompt the first answer follows; in the whole conversation it has
    moved on, so the first answer has no rendering that is both: the row is refused, never masked by guess."""
    control = ("[INST]", "[/INST]", "</s>")
    with pytest.raises(PrefixRuleError, match=r"message 2 \(assistant\)"):
        assistant_spans(renderer(SYSTEM_IN_LAST_USER), CONVERSATION, control)
    text, spans = assistant_spans(renderer(SYSTEM_IN_LAST_USER), CONVERSATION[1:], control)  # no system prompt
    assert turns(text, spans) == ["Hi there.</s>", "Red.</s>"]


def test_a_template_that_does_not_write_tool_calls_is_refused_naming_the_message():
    """CHATML writes each message's content only: a tool-call turn would train as its stop token alone, the call
    lost without a word. A template that writes the calls trains the row."""
    from vlsft.generic_masks import refuse_dropped_tool_calls
    from vlsft.templates import UnsupportedConversationError

    call = {"type": "function", "function": {"name": "zoom", "arguments": {"region": "left"}}}
    messages = [
        {"role": "user", "content": "Zoom?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "done"},
        {"role": "assistant", "content": "A dot."},
    ]
    with pytest.raises(UnsupportedConversationError, match=r"message 1 \(assistant\): the chat template does not write"):
        refuse_dropped_tool_calls(renderer(CHATML), messages)
    writes_calls = CHATML.replace(
        "{{ m.content }}", "{{ m.content }}{% for c in m.tool_calls or [] %}<call>{{ c.function.name }}</call>{% endfor %}"
    )
    refuse_dropped_tool_calls(renderer(writes_calls), messages)
    refuse_dropped_tool_calls(renderer(CHATML), [messages[0], messages[3]])  # no tool calls: nothing to check
