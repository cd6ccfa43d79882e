"""Reasoning in a row, and where its markers are structure or text.

An assistant message carries reasoning in a field (`reasoning_content`, or `reasoning`, a string) or inline at the
start of its content, as the model generates it (`<think>\\n...\\n</think>\\n\\nanswer`). Three ways a row would
train something other than what it says, each refused by row:
- the field is not a string (a list of steps, a number): the templates test `is string` and train an empty block;
- the reasoning (a field, or the content next to a field) spells out the family's reasoning markers: the template
  writes them verbatim, so they become the control tokens and the block closes mid-thought; only one block at the
  start of the content, in a message without a reasoning field, is the data's structure;
- the template leaves the reasoning out of the turn it trains (Qwen3-VL, Qwen2.5-VL, Gemma 3, Idefics3 render no
  reasoning field; older Gemma 4 revisions only on a tool-call turn): the answer would be trained without it.
"""

from __future__ import annotations

from typing import Any

from vlsft.collation.weighting import message_blocks
from vlsft.families import Family
from vlsft.templates import UnsupportedConversationError

REASONING_FIELDS = ("reasoning_content", "reasoning")


class ReasoningError(UnsupportedConversationError):
    """A row's reasoning would not be trained as written; the message names the message, the field and the fix."""


def has_reasoning_field(message: dict[str, Any]) -> bool:
    return any(message.get(field) is not None for field in REASONING_FIELDS)


def content_text(message: dict[str, Any]) -> str:
    """The text of a message's content (its text items joined, as the templates join them)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(
        item["text"] for item in content or [] if isinstance(item, dict) and isinstance(item.get("text"), str)
    )


def is_one_leading_block(text: str, parsed: frozenset[str], markers: tuple[str, str] | None) -> bool:
    """Whether the markers in `text` form at most one reasoning block at its start: each marker at most once, and an
    opening marker first in the text and followed by its closing marker. More blocks, or a block after the answer
    has begun, are dropped by the templates that split the block out (Qwen3.5 keeps what follows the last
    `</think>`) and written as control tokens by those that do not."""
    if any(text.count(token) > 1 for token in parsed):
        return False
    if markers is None or markers[0] not in text:
        return True
    opening, closing = markers
    return text.lstrip().startswith(opening) and closing in text and text.index(opening) < text.index(closing)


def reasoning_field_problems(messages: list[dict[str, Any]]) -> list[str]:
    """Reasoning fields that no template trains as given: not a string, or on a message that is not an assistant's."""
    problems = []
    for position, message in enumerate(messages):
        for field in REASONING_FIELDS if isinstance(message, dict) else ():
            value = message.get(field)
            if value is None:
                continue
            if message.get("role") != "assistant":
                problems.append(
                    f"message {position} is a {message.get('role')!r} message with `{field}`; only assistant turns "
                    "carry reasoning (the template would drop it)"
                )
            elif not isinstance(value, str):
                text = repr(value)
                problems.append(
                    f"message {position} `{field}` must be a string, got {type(value).__name__} "
                    f"{text[:60] + '...' if len(text) > 60 else text}: the template renders only a string, and would "
                    "train an empty reasoning block; join the steps into one text"
                )
    return problems


def dropped_reasoning_problems(
    messages: list[dict[str, Any]], text: str, spans: list[tuple[int, int]], family: Family
) -> list[str]:
    """Assistant messages whose reasoning (a non-empty string field) is not in the text of their trained turn: the
    template left it out, so the answer would be trained without the reasoning it was given with. A turn that is
    not trained (context) is not checked: there the template renders history as at inference. `spans` are the
    generation blocks of the rendered `text`."""
    assistants = [position for position, message in enumerate(messages) if message.get("role") == "assistant"]
    carrying = [
        (position, field, messages[position][field].strip())
        for position in assistants
        for field in REASONING_FIELDS
        if isinstance(messages[position].get(field), str) and messages[position][field].strip()
    ]
    if not carrying:
        return []
    turns = message_blocks(spans)
    if len(turns) != len(assistants):
        return []  # a template without one block per assistant message: its turns cannot be told apart
    problems = []
    for position, field, reasoning in carrying:
        trained = "".join(text[start:end] for start, end in turns[assistants.index(position)])
        if trained and reasoning not in trained:
            both = all(messages[position].get(name) is not None for name in REASONING_FIELDS)
            problems.append(
                f"message {position} has `{field}`, but the chat template ({family.display_name}) does not render it "
                "in this trained turn"
                + (" (the message has both `reasoning` and `reasoning_content`, and the template renders one)" if both else "")
            )
    return problems


def dropped_reasoning_fixes(family: Family, keep_renders_it: bool) -> str:
    """What would train a row's reasoning that the template drops (`dropped_reasoning_problems`)."""
    hints = ["set `reasoning_history: keep`, which renders and trains every turn's reasoning"] if keep_renders_it else []
    if family.reasoning_markers is not None and family.reasoning_opening is None:
        opening, closing = family.reasoning_markers
        hints.append(
            f"write it at the start of the content as the model generates it ({opening}\\n...\\n{closing}\\n\\n then "
            "the answer)"
        )
    hints.append("train on a template that renders reasoning (Qwen3.5, Qwen3.6, Qwen3.8, the current Gemma 4)")
    hints.append("or remove the field to train the answer alone")
    return "the reasoning would be dropped and the answer trained without it; " + ", ".join(hints)


def history_rule_problem(collator, row: dict[str, Any]) -> str:
    """Why a row that trains no token trains none, when a thinking template's history rule is the cause: its
    assistant turns all come before its last user message, which under `reasoning_history: drop` are context (found
    by rendering the row with 'keep'); else ""."""
    if "reasoning_history" not in collator.chat_template:
        return ""
    kwargs = {**(row.get("chat_template_kwargs") or {}), "reasoning_history": "keep"}
    try:
        _, spans = collator.render({**row, "chat_template_kwargs": kwargs})
    except Exception:  # the row fails otherwise under 'keep': the history rule is not what stops it
        return ""
    if not any(end > start for start, end in spans):
        return ""
    preserve = ", or `preserve_thinking: true`" if "preserve_thinking" in collator.boolean_switches else ""
    return (
        "no supervised token: the row's assistant turns all come before its last user message, and under "
        "`reasoning_history: drop` the template renders such history turns as the stock template does (they are never "
        "generated so at inference) and keeps them as context, not trained; set `reasoning_history: keep` to render "
        f"and train every turn with its reasoning{preserve}, or end the row with the assistant turn to train"
    )
