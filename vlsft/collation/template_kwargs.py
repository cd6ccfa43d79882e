"""Chat template variables (`enable_thinking`, `reasoning_history`...): the recipe's, overridden per row by its
`chat_template_kwargs` column."""

from __future__ import annotations

from typing import Any

# Arguments of `render_jinja_template` itself, which a template variable must not shadow.
_RESERVED_TEMPLATE_KWARGS = frozenset(
    {"conversations", "messages", "tools", "documents", "chat_template", "return_assistant_tokens_mask",
     "continue_final_message", "add_generation_prompt"}
)


class TemplateKwargsError(ValueError):
    """A `chat_template_kwargs` value that cannot be passed to the template."""


def row_template_kwargs(defaults: dict[str, Any] | None, row: dict[str, Any]) -> dict[str, Any]:
    """The chat template variables of one row: `defaults` (the recipe's), overridden by the row's own
    `chat_template_kwargs` column. Arrow gives every row the union of all rows' keys, with None for the missing
    ones: a None value means "not set", so the recipe's value (or else the template's default) applies."""
    own = row.get("chat_template_kwargs")
    if own is not None and not isinstance(own, dict):
        raise TemplateKwargsError(f"`chat_template_kwargs` must be a dict, got {type(own).__name__}")
    kwargs = {**(defaults or {}), **{key: value for key, value in (own or {}).items() if value is not None}}
    reserved = sorted(_RESERVED_TEMPLATE_KWARGS & set(kwargs))
    if reserved:
        raise TemplateKwargsError(
            f"`chat_template_kwargs` may not set {', '.join(reserved)}: those are given by the row itself "
            "(`messages`, `tools`) or by vlsft"
        )
    return {key: value for key, value in kwargs.items() if value is not None}
