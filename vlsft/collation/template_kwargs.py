"""Chat template variables (`enable_thinking`, `reasoning_history`...): the recipe's, overridden per row by its
`chat_template_kwargs` column, each checked for the type the template tests it as.

A template tests its switches as booleans (`enable_thinking is false`, `{% if enable_thinking %}`): the string
"false" or the number 0 passes neither test as intended (a non-empty string is true; 0 is not `false`), so the run
would train with the switch the other way round. A switch takes `true` or `false` only."""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta, nodes

# Arguments of `render_jinja_template` itself, which a template variable must not shadow.
_RESERVED_TEMPLATE_KWARGS = frozenset(
    {"conversations", "messages", "tools", "documents", "chat_template", "return_assistant_tokens_mask",
     "continue_final_message", "add_generation_prompt"}
)


# The boolean switches of the templates vlsft ships (`tests/test_reasoning_bad_input.py` checks this list against
# `boolean_switches` of every shipped template): what `VLSFTConfig` checks before a processor, and so a template, is
# known. The collator checks the switches of its own template (`boolean_switches`), a custom one's included.
KNOWN_BOOLEAN_SWITCHES = frozenset({"enable_thinking", "preserve_thinking", "add_vision_id"})
# Values the vlsft training templates compare `reasoning_history` with; any other would silently mean 'drop'.
REASONING_HISTORY_VALUES = ("drop", "keep")

_GENERATION_TAGS = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")
# How a template may use a switch: as a condition (truthiness) ...
_CONDITION_PARENTS = (nodes.If, nodes.CondExpr, nodes.And, nodes.Or, nodes.Not)
# ... or in tests that say nothing of its type (`is defined`), or with a default.
_NEUTRAL_TESTS = ("defined", "undefined", "none")
_BOOLEAN_TESTS = ("true", "false", "boolean")


class TemplateKwargsError(ValueError):
    """A `chat_template_kwargs` value that cannot be passed to the template."""


@lru_cache(maxsize=32)
def boolean_switches(template: str) -> frozenset[str]:
    """The variables a chat template reads as true/false switches: those it tests with `is true` / `is false`, and
    those it only uses as conditions (`{% if add_vision_id %}`, `enable_thinking is defined and enable_thinking`).
    Variables the template sets itself, and those vlsft passes (`_RESERVED_TEMPLATE_KWARGS`), are not switches."""
    tree = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(_GENERATION_TAGS.sub("", template))
    inputs = meta.find_undeclared_variables(tree) - _RESERVED_TEMPLATE_KWARGS
    # A name the template sets is its own, unless the setting reads the caller's value (`{% set enable_thinking =
    # enable_thinking | default(false) %}`).
    for assign in tree.find_all(nodes.Assign):
        for target in assign.find_all(nodes.Name):
            if target.ctx == "store" and target.name not in {name.name for name in assign.node.find_all(nodes.Name)}:
                inputs.discard(target.name)
    tested, conditions, other = set(), set(), set()

    def visit(node: nodes.Node) -> None:
        for child in node.iter_child_nodes():
            if isinstance(child, nodes.Name) and child.ctx == "load" and child.name in inputs:
                if isinstance(node, nodes.Test) and node.name in _BOOLEAN_TESTS:
                    tested.add(child.name)
                elif isinstance(node, _CONDITION_PARENTS) and (
                    not isinstance(node, (nodes.If, nodes.CondExpr)) or node.test is child
                ):
                    conditions.add(child.name)
                elif not (
                    (isinstance(node, nodes.Test) and node.name in _NEUTRAL_TESTS)
                    or (isinstance(node, nodes.Filter) and node.name == "default")
                ):
                    other.add(child.name)
            visit(child)

    visit(tree)
    return frozenset(tested | (conditions - other))


def template_kwargs_problems(kwargs: dict[str, Any] | None, switches: frozenset[str], where: str) -> list[str]:
    """Why template variables `kwargs` (named `where` in the messages) are not what the template tests them as:
    a switch that is not a bool, a `reasoning_history` other than 'drop' or 'keep'. None values are "not set"."""
    problems = []
    for key, value in (kwargs or {}).items():
        if value is None:
            continue
        if key in switches and not isinstance(value, bool):
            problems.append(
                f"`{where}.{key}` must be true or false, got {_describe(value)}: the chat template tests it as a "
                "boolean, where " + (
                    f"a string is true whatever it says, so {value!r} would turn it on"
                    if isinstance(value, str) else
                    f"{value!r} is neither true nor false (`{key} is false` does not hold for it, yet `if {key}` "
                    f"{'does' if _truthy(value) else 'does not'})"
                ) + "; write true or false (YAML/JSON booleans, unquoted)"
            )
        if key == "reasoning_history" and value not in REASONING_HISTORY_VALUES:
            problems.append(
                f"`{where}.reasoning_history` must be 'drop' or 'keep', got {_describe(value)}: the training "
                "template would read any other value as 'drop'"
            )
    return problems


def _truthy(value: Any) -> bool:
    try:
        return bool(value)
    except Exception:
        return True


def _describe(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"the float {value}"
    text = repr(value)
    return f"the {type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def row_template_kwargs(
    defaults: dict[str, Any] | None, row: dict[str, Any], switches: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The chat template variables of one row: `defaults` (the recipe's), overridden by the row's own
    `chat_template_kwargs` column. Arrow gives every row the union of all rows' keys, with None for the missing
    ones: a None value means "not set", so the recipe's value (or else the template's default) applies. A row value
    that is not of the type the template tests (`switches`: booleans) raises `TemplateKwargsError`."""
    own = row.get("chat_template_kwargs")
    if own is not None and not isinstance(own, dict):
        raise TemplateKwargsError(f"`chat_template_kwargs` must be a dict, got {type(own).__name__}")
    problems = template_kwargs_problems(own, switches, "chat_template_kwargs")
    if problems:
        raise TemplateKwargsError("; ".join(problems))
    kwargs = {**(defaults or {}), **{key: value for key, value in (own or {}).items() if value is not None}}
    reserved = sorted(_RESERVED_TEMPLATE_KWARGS & set(kwargs))
    if reserved:
        raise TemplateKwargsError(
            f"`chat_template_kwargs` may not set {', '.join(reserved)}: those are given by the row itself "
            "(`messages`, `tools`) or by vlsft"
        )
    return {key: value for key, value in kwargs.items() if value is not None}
