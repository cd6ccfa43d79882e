"""Checks of a row's conversation that need no tokenization: roles, content items, tool calls (a name, JSON-object
arguments, every tool message answering a call), `images` being a list, and message text that spells out a control
token of the tokenizer. Each returns the problems it finds as sentences that say the fix; empty when there is none.
"""

from __future__ import annotations

import json
from typing import Any

from vlsft.collation.reasoning import REASONING_FIELDS, has_reasoning_field, reasoning_field_problems
from vlsft.collation.template_kwargs import TemplateKwargsError, row_template_kwargs
from vlsft.collator import VisionChatCollator
from vlsft.data.rows import ImagesNotAListError, VideosNotAListError, row_images, row_videos

KNOWN_ROLES = ("system", "user", "assistant", "tool")
CONTENT_TYPES = ("text", "image", "video")


def message_problems(messages: Any) -> list[str]:
    """Problems with the shape of a conversation: roles, content items, tool calls. Empty if it can be rendered."""
    if not isinstance(messages, list) or not messages:
        return [f"'messages' must be a non-empty list of messages, got {_describe(messages)}"]
    problems = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            problems.append(f"message {position} must be a dict with 'role' and 'content', got {_describe(message)}")
            continue
        role = message.get("role")
        if role not in KNOWN_ROLES:
            problems.append(f"message {position} has unknown role {role!r} (expected one of {', '.join(KNOWN_ROLES)})")
        content = message.get("content")
        if isinstance(content, list):
            for item_position, item in enumerate(content):
                problems.extend(_content_item_problems(position, item_position, item))
        elif content is not None and not isinstance(content, str):
            problems.append(f"message {position} content must be a string or a list of items, got {_describe(content)}")
        tool_calls = message.get("tool_calls")
        if tool_calls is not None:
            problems.extend(_tool_call_problems(position, role, tool_calls))
    return problems + _orphan_tool_problems(messages) + reasoning_field_problems(messages)


def _orphan_tool_problems(messages: list) -> list[str]:
    """A tool message answers a call: it must follow an assistant turn with tool calls (directly, or after other tool
    responses to the same turn), and a turn gets no more responses than it made calls."""
    problems, open_calls = [], 0
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "assistant":
            calls = message.get("tool_calls")
            open_calls = len(calls) if isinstance(calls, list) else 0
        elif role == "tool":
            if open_calls == 0:
                problems.append(
                    f"message {position} is a tool message with no preceding tool call; a tool response must follow "
                    "the assistant message whose `tool_calls` it answers"
                )
            open_calls = max(open_calls - 1, 0)
        else:
            open_calls = 0
    return problems


def _content_item_problems(position: int, item_position: int, item: Any) -> list[str]:
    where = f"message {position} content item {item_position}"
    if not isinstance(item, dict):
        return [f"{where} must be a dict like {{'type': 'text', 'text': ...}}, got {_describe(item)}"]
    kind = item.get("type")
    if kind not in CONTENT_TYPES:
        return [f"{where} has type {kind!r}; vlsft trains on 'text', 'image' and 'video' items"]
    if kind == "text" and not isinstance(item.get("text"), str):
        return [f"{where} is a text item without a string 'text'"]
    return []


def _tool_call_problems(position: int, role: Any, tool_calls: Any) -> list[str]:
    if role != "assistant":
        return [f"message {position} is a {role!r} message with tool_calls; only assistant messages make tool calls"]
    if not isinstance(tool_calls, list):
        return [f"message {position} tool_calls must be a list, got {_describe(tool_calls)}"]
    problems = []
    for call_position, call in enumerate(tool_calls):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            problems.append(f"message {position} tool call {call_position} has no function name")
            continue
        problem = _arguments_problem(function.get("arguments"))
        if problem:
            problems.append(f"message {position} tool call {call_position} ({function['name']}): {problem}")
    return problems


def _arguments_problem(arguments: Any) -> str:
    """Why a tool call's `arguments` is not a JSON object (a dict, or a string holding one), or ""."""
    if isinstance(arguments, dict):
        return ""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            return f"`arguments` is a string that is not JSON ({_describe(arguments)}); write a JSON object or a dict"
        if isinstance(parsed, dict):
            return ""
        return f"`arguments` must be a JSON object, got the JSON {type(parsed).__name__} {_describe(arguments)}"
    return f"`arguments` must be a JSON object (a dict or a JSON string), got {_describe(arguments)}"


def row_problems(row: dict[str, Any], collator: VisionChatCollator) -> list[str]:
    """Problems of a row beyond its messages' shape: `images` or `videos` not a list, its template variables,
    control-token text in a message."""
    problems = []
    try:
        row_template_kwargs(collator.template_kwargs, row, collator.boolean_switches)
    except TemplateKwargsError as error:
        problems.append(str(error))
    images = row.get("images")
    if images is not None and not isinstance(images, (list, tuple)):
        try:
            row_images(row)
        except ImagesNotAListError as error:
            problems.append(str(error))
    try:
        row_videos(row)
    except VideosNotAListError as error:
        problems.append(str(error))
    if not collator.escape_control_tokens:
        problems.extend(control_token_problems(row["messages"], collator))
    problems.extend(tool_call_control_token_problems(row["messages"], collator))
    return problems


def tool_call_control_token_problems(messages: list[dict[str, Any]], collator: VisionChatCollator) -> list[str]:
    """Control-token text in a tool call (its name or arguments), which the template writes out verbatim. Escaping
    applies to message text only, so this is a bad row either way."""
    problems = []
    for position, message in enumerate(messages):
        for call_position, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function", call) if isinstance(call, dict) else {}
            arguments = function.get("arguments")
            text = " ".join([str(function.get("name")), arguments if isinstance(arguments, str) else json.dumps(arguments)])
            tokens = collator.control_tokens_in(text)
            if tokens:
                problems.append(
                    f"message {position} tool call {call_position} contains the control token"
                    f"{'s' if len(tokens) > 1 else ''} {', '.join(tokens)}, which the template writes out verbatim "
                    "(escaping applies to message text only); remove it"
                )
    return problems


_ESCAPE_HINT = "train on it as plain text with `escape_control_tokens: true` (`VLSFTConfig(escape_control_tokens=True)`)"


def control_token_problems(messages: list[dict[str, Any]], collator: VisionChatCollator) -> list[str]:
    """One problem per message whose text spells out a control token of the collator's tokenizer, but the reasoning
    block it carries as structure (`VisionChatCollator.structure_tokens`); reasoning markers out of place are named
    as such."""
    problems = []
    markers = collator.template_parsed_tokens
    for position, message in enumerate(messages):
        content = message.get("content")
        texts = [content] if isinstance(content, str) else [
            item.get("text") for item in content or [] if isinstance(item, dict) and item.get("type") == "text"
        ]
        kept = collator.structure_tokens(message)
        in_content = [token for text in texts for token in collator.control_tokens_in(text, kept)]
        in_fields = {field: collator.control_tokens_in(message.get(field)) for field in REASONING_FIELDS}
        assistant = message.get("role") == "assistant"
        misplaced = list(dict.fromkeys(token for token in in_content if assistant and token in markers))
        for field, tokens in in_fields.items():
            field_markers = [token for token in tokens if token in markers]
            if field_markers:
                problems.append(
                    f"message {position} `{field}` contains {_named(field_markers)}, the reasoning block's own "
                    "marker: the template writes the field verbatim, so the block would end there and the model "
                    f"learn to close its reasoning mid-thought; remove it, or {_ESCAPE_HINT}"
                )
        if misplaced:
            where = (
                "its content next to a reasoning field (the reasoning would be given twice, and the content's markers "
                "written as control tokens inside the answer)"
                if has_reasoning_field(message) else
                "its content, but not as one reasoning block at the start of it (the template would drop the text "
                "around it or write the markers as control tokens inside the answer)"
            )
            problems.append(
                f"message {position} contains {_named(misplaced)} in {where}; write the reasoning once, as one block at "
                f"the start of the content or in `reasoning_content`, or {_ESCAPE_HINT}"
            )
        others = list(dict.fromkeys(
            [token for token in in_content if token not in misplaced]
            + [token for tokens in in_fields.values() for token in tokens if token not in markers]
        ))
        if others:
            problems.append(
                f"message {position} contains the control token{'s' if len(others) > 1 else ''} {', '.join(others)}, "
                f"which would be tokenized as the token itself; remove it, or {_ESCAPE_HINT}"
            )
    return problems


def _named(tokens: list[str]) -> str:
    return f"the control token{'s' if len(tokens) > 1 else ''} {', '.join(tokens)}"


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"

